/*
 * Baton live updates: plain JS, no build step. Loaded on every page after htmx
 * and the Bootstrap bundle.
 *
 * When <body data-live="1">, opens a WebSocket to /ws/live/ and keeps it open,
 * reconnecting with exponential back-off (0.5 s doubling up to 15 s, with jitter).
 *
 * Server messages are JSON objects; every key except "type" is optional:
 *   {"type": "...", "message": "text", "level": "info|success|warning|danger",
 *    "refresh": ["inbox", "counts", "instance-42"], "counts": {"inbox": 3, "unread": 2}}
 *
 * Events fired on document.body (through htmx.trigger, so hx-trigger can use them):
 *   baton:resync          after every reconnect except the first connect, and every 60 s while the socket is
 *                         open and the tab visible: live events are hints carried by Redis pub/sub, which
 *                         drops what it cannot deliver (a web process reconnecting to Redis), so a lost one
 *                         is repaired within a minute
 *   baton:refresh-<name>  once per name in "refresh"
 *                         (e.g. hx-trigger="baton:refresh-inbox from:body")
 *   baton:settle-<name>   once, when no refresh of that name has come for SETTLE_MS: htmx's throttle drops the
 *                         events within its window (it does not fetch again at its end), so a region that
 *                         throttles baton:refresh-<name> also listens, unthrottled, for this one, or the last hint
 *                         of a burst (a bulk job's final batch, the last instance to complete) would wait for the
 *                         resync
 *   baton:message         for every message; event.detail is the parsed message
 *
 * Exposes window.batonLive = {socket, connected, ...} for tests.
 */
(function () {
  "use strict";

  var MIN_DELAY_MS = 500;
  var MAX_DELAY_MS = 15000;
  var TOAST_DELAY_MS = 5000;
  var RESYNC_MS = 60000;
  // Longer than any throttle a template puts on a baton:refresh-<name> trigger (3 s at most).
  var SETTLE_MS = 3500;
  var MAX_TOASTS = 5;
  var LEVELS = { info: true, success: true, warning: true, danger: true };

  var live = {
    socket: null,
    connected: false,
    attempts: 0, // failed attempts since the last successful open
    openCount: 0, // successful opens since page load
    url: null,
    handleMessage: handleMessage, // exposed so tests can feed messages directly
    connect: connect,
    nextDelay: nextDelay,
    resyncMs: RESYNC_MS,
    resyncEvery: resyncEvery, // exposed so a test (or a page) can change the safety net's period
  };
  window.batonLive = live;

  var reconnectTimer = null;
  var resyncTimer = null;
  var settleTimers = {};
  var stopped = false;

  // ---- events ------------------------------------------------------------

  function fire(name, detail) {
    if (window.htmx && typeof window.htmx.trigger === "function") {
      window.htmx.trigger(document.body, name, detail);
    } else {
      document.body.dispatchEvent(
        new CustomEvent(name, { bubbles: true, detail: detail || {} })
      );
    }
  }

  // ---- connection status indicator -----------------------------------------

  function setStatus(kind) {
    // kind: "connecting" | "live" | "reconnecting"
    var el = document.getElementById("live-status");
    if (!el) return;
    var dot = el.querySelector(".live-dot");
    var text = el.querySelector(".live-text");
    if (!dot || !text) {
      el.textContent = "";
      dot = document.createElement("span");
      dot.className = "live-dot";
      dot.setAttribute("aria-hidden", "true");
      text = document.createElement("span");
      text.className = "live-text visually-hidden";
      el.appendChild(dot);
      el.appendChild(text);
    }
    var label =
      kind === "live" ? "Live" : kind === "reconnecting" ? "Reconnecting…" : "Connecting…";
    el.classList.add("live-status");
    el.classList.toggle("is-connected", kind === "live");
    el.classList.toggle("is-reconnecting", kind !== "live");
    el.dataset.state = kind;
    el.title = label;
    text.textContent = label;
  }

  // ---- counts ------------------------------------------------------------

  function applyCounts(counts) {
    if (!counts || typeof counts !== "object") return;
    // Counts are capped by the server (counts.cap): at the cap the badge says "99+".
    var cap = Number(counts.cap) || 0;
    Object.keys(counts).forEach(function (key) {
      if (key === "cap") return;
      var value = counts[key];
      var n = Number(value);
      var selector = '[data-count="' + cssEscape(key) + '"]';
      var text = value === null || value === undefined ? "0" : String(value);
      if (cap && n >= cap) text = String(cap - 1) + "+";
      document.querySelectorAll(selector).forEach(function (el) {
        el.textContent = text;
        el.classList.toggle("d-none", !n);
      });
    });
  }

  function cssEscape(s) {
    s = String(s);
    if (window.CSS && typeof window.CSS.escape === "function") return window.CSS.escape(s);
    return s.replace(/["\\]/g, "\\$&");
  }

  // ---- toasts ------------------------------------------------------------

  // One event reaches a socket once per group it was sent to (a person's own channel and each of their groups),
  // so the same toast can arrive twice within milliseconds: it is shown once. Refreshes still run each time.
  var TOAST_REPEAT_MS = 3000;
  var recentToasts = {};

  function isRepeat(message, level) {
    var key = level + "|" + message;
    var now = Date.now();
    Object.keys(recentToasts).forEach(function (k) {
      if (now - recentToasts[k] > TOAST_REPEAT_MS) delete recentToasts[k];
    });
    if (recentToasts[key] !== undefined) return true;
    recentToasts[key] = now;
    return false;
  }

  function showToast(message, level) {
    var container = document.getElementById("toasts");
    if (!container) return;
    if (!LEVELS[level]) level = "info";
    if (isRepeat(String(message), level)) return;

    // Don't let a burst of messages fill the screen.
    while (container.children.length >= MAX_TOASTS) {
      container.removeChild(container.firstElementChild);
    }

    var toast = document.createElement("div");
    toast.className = "toast align-items-center border-0 text-bg-" + level;
    if (level === "danger") {
      toast.setAttribute("role", "alert");
      toast.setAttribute("aria-live", "assertive");
    } else {
      toast.setAttribute("role", "status");
      toast.setAttribute("aria-live", "polite");
    }
    toast.setAttribute("aria-atomic", "true");
    toast.dataset.level = level;

    var row = document.createElement("div");
    row.className = "d-flex";
    var body = document.createElement("div");
    body.className = "toast-body";
    body.textContent = String(message); // never innerHTML: message comes from the server
    var close = document.createElement("button");
    close.type = "button";
    // warning and info use dark text on a light background; the others are white on dark.
    close.className =
      "btn-close me-2 m-auto" + (level === "success" || level === "danger" ? " btn-close-white" : "");
    close.setAttribute("data-bs-dismiss", "toast");
    close.setAttribute("aria-label", "Close");

    row.appendChild(body);
    row.appendChild(close);
    toast.appendChild(row);
    container.appendChild(toast);

    var remove = function () {
      if (toast.parentNode) toast.parentNode.removeChild(toast);
    };
    if (window.bootstrap && window.bootstrap.Toast) {
      toast.addEventListener("hidden.bs.toast", remove);
      window.bootstrap.Toast.getOrCreateInstance(toast, {
        autohide: true,
        delay: TOAST_DELAY_MS,
      }).show();
    } else {
      toast.classList.add("show");
      close.addEventListener("click", remove);
      setTimeout(remove, TOAST_DELAY_MS);
    }
    return toast;
  }

  // ---- messages ----------------------------------------------------------

  // live-names:begin (mirrors orchestrator/live_names.py BROWSER; tests/orchestrator/test_live_names.py compares)
  var LIVE_NAMES = {
    "refreshPrefix": "baton:refresh-",
    "refresh": ["instances", "inbox", "counts", "notifications", "audit-verification"],
    "refreshPrefixes": ["instance-", "task-", "bulk-"],
    "taskGoneEvents": ["task.claimed", "task.completed", "task.cancelled", "task.delegated"]
  };
  // live-names:end
  var GONE_EVENTS = {};
  LIVE_NAMES.taskGoneEvents.forEach(function (type) {
    GONE_EVENTS[type] = true;
  });

  function settleLater(name) {
    clearTimeout(settleTimers[name]);
    settleTimers[name] = setTimeout(function () {
      delete settleTimers[name];
      fire("baton:settle-" + name);
    }, SETTLE_MS);
  }

  function handleMessage(data) {
    var msg = data;
    if (typeof data === "string") {
      try {
        msg = JSON.parse(data);
      } catch (e) {
        return;
      }
    }
    if (!msg || typeof msg !== "object" || Array.isArray(msg) || !msg.type) return;

    if (msg.counts) applyCounts(msg.counts);

    // A task someone else has taken, decided or withdrawn leaves the list at once; the re-fetch below then
    // brings the list up to date (new rows, order) without making the person wait for it.
    if (GONE_EVENTS[msg.type] && msg.task !== undefined) {
      document.querySelectorAll('#task-list [data-task="' + cssEscape(msg.task) + '"]').forEach(function (row) {
        row.remove();
      });
    }

    if (Array.isArray(msg.refresh)) {
      var seen = {};
      msg.refresh.forEach(function (name) {
        if (typeof name !== "string" && typeof name !== "number") return;
        name = String(name);
        if (!name || seen[name]) return;
        seen[name] = true;
        fire(LIVE_NAMES.refreshPrefix + name);
        settleLater(name);
      });
    }

    if (msg.message !== undefined && msg.message !== null && msg.message !== "") {
      showToast(msg.message, msg.level);
    }

    fire("baton:message", msg);
  }

  // ---- socket and back-off -------------------------------------------------

  function nextDelay(attempt) {
    // 0.5 s, 1 s, 2 s, ... capped at 15 s; "equal jitter" keeps it in [d/2, d].
    var d = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * Math.pow(2, attempt));
    return Math.round(d / 2 + Math.random() * (d / 2));
  }

  function scheduleReconnect() {
    if (stopped || reconnectTimer !== null) return;
    var delay = nextDelay(live.attempts);
    live.attempts += 1;
    reconnectTimer = setTimeout(function () {
      reconnectTimer = null;
      connect();
    }, delay);
  }

  function reconnectNow() {
    if (stopped || live.connected) return;
    if (live.socket && live.socket.readyState === WebSocket.CONNECTING) return;
    if (reconnectTimer !== null) {
      clearTimeout(reconnectTimer);
      reconnectTimer = null;
    }
    connect();
  }

  function connect() {
    if (stopped) return;
    if (
      live.socket &&
      (live.socket.readyState === WebSocket.OPEN || live.socket.readyState === WebSocket.CONNECTING)
    ) {
      return;
    }
    setStatus(live.openCount === 0 && live.attempts === 0 ? "connecting" : "reconnecting");

    var socket;
    try {
      socket = new WebSocket(live.url);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    live.socket = socket;

    socket.addEventListener("open", function () {
      if (live.socket !== socket) return;
      live.connected = true;
      live.attempts = 0;
      live.openCount += 1;
      setStatus("live");
      // Pages that follow one object (an instance) subscribe again on every (re)connect.
      document.dispatchEvent(new CustomEvent("baton:socket-open"));
      if (live.openCount > 1) {
        // Anything could have changed while we were away.
        fire("baton:resync");
      }
    });

    socket.addEventListener("message", function (event) {
      if (live.socket !== socket) return;
      handleMessage(event.data);
    });

    socket.addEventListener("close", function (event) {
      if (live.socket !== socket) return;
      live.connected = false;
      if (stopped) return;
      if (event.code === 4401) {
        // The server ended the session (signed out, deactivated, deleted, password changed): reconnecting
        // would be refused forever, so go and sign in, coming back to this page afterwards. Once a minute at
        // most: if the page itself is still signed in (a proxy dropping the socket's cookie), sign-in sends it
        // straight back, and going round again would reload it for ever.
        stopped = true;
        var now = Date.now();
        var last = 0;
        try {
          last = Number(window.sessionStorage.getItem("batonLive.signIn")) || 0;
          window.sessionStorage.setItem("batonLive.signIn", String(now));
        } catch (e) {}
        if (now - last > 60000) {
          window.location.assign("/login/?next=" + encodeURIComponent(location.pathname + location.search));
        }
        return;
      }
      setStatus("reconnecting");
      scheduleReconnect();
    });

    // An error is always followed by close; reconnecting is handled there.
    socket.addEventListener("error", function () {});
  }

  // ---- periodic resync (the safety net under the events) ----------------------

  function scheduleResync() {
    if (resyncTimer !== null) clearTimeout(resyncTimer);
    resyncTimer = setTimeout(function () {
      resyncTimer = null;
      if (live.connected && !stopped && document.visibilityState === "visible") {
        fire("baton:resync");
        askCounts();
      }
      scheduleResync();
    }, live.resyncMs);
  }

  // The badges heal with the lists: a resync re-fetches rows, and the counts come back from the socket
  // ({"type": "counts", "counts": {...}}), as they do on every hello.
  function askCounts() {
    if (live.socket && live.socket.readyState === WebSocket.OPEN) {
      live.socket.send(JSON.stringify({ ask: "counts" }));
    }
  }

  function resyncEvery(seconds) {
    live.resyncMs = seconds * 1000;
    scheduleResync();
  }

  function start() {
    if (!document.body || document.body.dataset.live !== "1") return;
    if (!("WebSocket" in window)) return;
    live.url =
      (location.protocol === "https:" ? "wss" : "ws") + "://" + location.host + "/ws/live/";

    window.addEventListener("online", reconnectNow);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") reconnectNow();
    });
    // Don't count a page unload as a dropped connection; reconnect if restored from bfcache.
    window.addEventListener("pagehide", function () {
      stopped = true;
      if (reconnectTimer !== null) {
        clearTimeout(reconnectTimer);
        reconnectTimer = null;
      }
      if (live.socket) live.socket.close();
      live.connected = false;
    });
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) {
        stopped = false;
        reconnectNow();
      }
    });

    connect();
    scheduleResync();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
