/*
 * Baton forms: plain JS, no build step, loaded on every page after htmx.
 *
 * - Counters: an element [data-counter-for="NAME"] shows how many characters the field NAME of its form holds
 *   out of its maxlength (" (12 of 4000 used)"), updated as the person types.
 * - Typed text survives live swaps: before htmx replaces the content of an element marked [data-keep-typed],
 *   the text typed into its textareas and text inputs is kept; after the swap it goes back into the field of
 *   the same name, or, when the new content has no such field (someone else claimed the task), into the
 *   read-only box [data-kept-for="NAME"], which is then shown. Nothing typed is lost to a refresh.
 * - Bodies too large to send: a POST form (method="post" or hx-post) is not sent when its fields, counted as
 *   Django counts them, pass the server's DATA_UPLOAD_MAX_MEMORY_SIZE (the page's meta "baton-body-max", or the
 *   form's own [data-body-max="BYTES"]), which Django enforces before any view, answering with an error page and
 *   losing what was typed. Its box [data-body-too-large] is shown instead, with the size in its
 *   [data-body-size] (a form without one gets a plain one at its top), and the typed text stays where it is.
 * - One send per press: a double click (or Enter pressed twice) on a POST form sent it twice; the first send did
 *   the work and the second was refused (a 409 "only failed instances can be retried; this one is running"), so
 *   the person saw an error for an action that worked. Once a POST form is sent, further sends of it are ignored:
 *   a full-page POST until its answer replaces the page, an htmx request until it has ended (htmx:afterRequest).
 *   Its pressed button shows it is busy (disabled, aria-busy, a small spinner). A send refused before it leaves
 *   (too large, above; a declined confirm; anything that cancels the submit event) leaves the form as it was, and
 *   a page the browser brings back from its back/forward cache (pageshow, persisted) has its buttons usable again.
 *   A form marked [data-resend] opts out (none needs to today).
 */
(function () {
  "use strict";

  function fieldFor(counter) {
    var name = counter.getAttribute("data-counter-for");
    var scope = counter.closest("form") || document;
    return scope.querySelector('[name="' + name + '"]');
  }

  function updateCounter(counter) {
    var field = fieldFor(counter);
    if (!field) return;
    var max = Number(field.getAttribute("maxlength")) || 0;
    var used = field.value.length;
    counter.textContent = used ? " (" + used + (max ? " of " + max : "") + " used)" : "";
    counter.classList.toggle("text-danger", max > 0 && used >= max);
  }

  function updateCounters(root) {
    (root || document).querySelectorAll("[data-counter-for]").forEach(updateCounter);
  }

  document.addEventListener("input", function (event) {
    var field = event.target;
    if (!field || !field.name || !field.form) return;
    field.form.querySelectorAll('[data-counter-for="' + field.name + '"]').forEach(updateCounter);
  });

  // Bytes a form's fields count against Django's DATA_UPLOAD_MAX_MEMORY_SIZE. Multipart: each field's name plus 2,
  // and its value in UTF-8 (Django counts fields, not the body). Otherwise the whole urlencoded body, as the
  // browser and htmx encode it (percent-escapes: up to 9 bytes for a character). Every line break is sent as CR LF,
  // as browsers send a textarea's.
  function bodyBytes(form, submitter) {
    var data;
    try {
      data = submitter ? new FormData(form, submitter) : new FormData(form);
    } catch (error) {
      data = new FormData(form); // a browser without the submitter argument: a button's name is a few bytes
    }
    var multipart = (form.getAttribute("enctype") || form.getAttribute("hx-encoding") || "") === "multipart/form-data";
    var encoder = new TextEncoder();
    var urlencoded = new URLSearchParams();
    var size = 0;
    data.forEach(function (value, name) {
      if (typeof value !== "string") return; // a file: Django does not count uploads against this limit
      value = value.replace(/\r\n|\r|\n/g, "\r\n");
      if (multipart) size += name.length + 2 + encoder.encode(value).length;
      else urlencoded.append(name, value);
    });
    return multipart ? size : urlencoded.toString().length;
  }

  function bodyMaxOf(form) {
    var own = Number(form.getAttribute("data-body-max"));
    if (own) return own;
    var post = (form.getAttribute("method") || "").toLowerCase() === "post" || form.hasAttribute("hx-post");
    var meta = document.querySelector('meta[name="baton-body-max"]');
    return post && meta ? Number(meta.getAttribute("content")) || 0 : 0;
  }

  // The box a form without its own gets: the same words, at its top, where the person looks after pressing send.
  function boxOf(form, max) {
    var box = form.querySelector("[data-body-too-large]");
    if (box) return box;
    box = document.createElement("div");
    box.className = "alert alert-danger small py-2";
    box.setAttribute("role", "alert");
    box.setAttribute("tabindex", "-1");
    box.setAttribute("data-body-too-large", "");
    var strong = document.createElement("strong");
    strong.textContent = "Not sent:";
    var size = document.createElement("span");
    size.setAttribute("data-body-size", "");
    box.append(
      strong,
      " as a form sends it, this is ",
      size,
      " bytes, more than the " + max.toLocaleString("en-US") + " bytes a form may send. Nothing was saved, and " +
        "what you typed is still here: shorten it and send again."
    );
    form.prepend(box);
    return box;
  }

  // Capturing, so it runs before any other submit handler (htmx's included) and can stop the send.
  document.addEventListener(
    "submit",
    function (event) {
      var form = event.target;
      if (!form || !form.getAttribute) return;
      var max = bodyMaxOf(form);
      if (!max) return;
      var size = bodyBytes(form, event.submitter);
      if (size <= max) {
        // Hidden but keeping its room until the send ends (release, below): gone at once, it moved the button up
        // under the pointer, and the second click of a double click landed on whatever took its place (a link,
        // which cancelled the send).
        var shown = form.querySelector("[data-body-too-large]:not(.d-none)");
        if (shown) shown.classList.add("invisible");
        return;
      }
      var box = boxOf(form, max);
      event.preventDefault();
      event.stopImmediatePropagation();
      box.querySelectorAll("[data-body-size]").forEach(function (place) {
        place.textContent = size.toLocaleString("en-US");
      });
      box.classList.remove("d-none", "invisible");
      box.focus();
    },
    true
  );

  // --- One send per press --------------------------------------------------------------------------------------

  var sending = new WeakMap(); // form -> the button marked busy for its send (or null: sent without a button)

  function htmxPost(form) {
    return ["hx-post", "hx-put", "hx-patch", "hx-delete"].some(function (name) {
      return form.hasAttribute(name);
    });
  }

  function guarded(form) {
    if (!form || !form.getAttribute || form.tagName !== "FORM" || form.hasAttribute("data-resend")) return false;
    return (form.getAttribute("method") || "").toLowerCase() === "post" || htmxPost(form);
  }

  // The button the send is shown on: the one pressed, else (Enter in a field, a script's requestSubmit()) the
  // form's first submit button, the one Enter presses.
  function buttonOf(form, submitter) {
    if (submitter && submitter.form === form) return submitter;
    return form.querySelector('button:not([type]), button[type="submit"], input[type="submit"]');
  }

  function markBusy(form, submitter) {
    var button = buttonOf(form, submitter);
    sending.set(form, button || null);
    form.setAttribute("aria-busy", "true");
    if (!button) return;
    button.setAttribute("aria-busy", "true");
    button.classList.add("baton-busy");
    if (button.tagName === "BUTTON" && !button.querySelector(".baton-spinner")) {
      var spinner = document.createElement("span");
      spinner.className = "spinner-border spinner-border-sm baton-spinner me-1";
      spinner.setAttribute("aria-hidden", "true");
      button.prepend(spinner);
    }
    // Disabled a moment later, not now: the browser builds what a form sends after its submit event, leaving out
    // disabled buttons, so the pressed one's name and value (decision=approve) would be lost. Until then the
    // guard below already ignores a second send.
    setTimeout(function () {
      if (sending.get(form) === button && !button.disabled) {
        button.disabled = true;
        button.setAttribute("data-baton-disabled", "");
      }
    });
  }

  function release(form) {
    var button = sending.get(form);
    sending.delete(form);
    form.removeAttribute("aria-busy");
    form.querySelectorAll("[data-body-too-large].invisible").forEach(function (box) {
      box.classList.replace("invisible", "d-none");
    });
    if (!button) return;
    button.removeAttribute("aria-busy");
    button.classList.remove("baton-busy");
    if (button.hasAttribute("data-baton-disabled")) {
      button.removeAttribute("data-baton-disabled");
      button.disabled = false;
    }
    button.querySelectorAll(".baton-spinner").forEach(function (spinner) {
      spinner.remove();
    });
  }

  // First of all submit handlers (on window, capturing: before the size check and htmx): a form already sending
  // is not sent again.
  window.addEventListener(
    "submit",
    function (event) {
      var form = event.target;
      if (!guarded(form) || !sending.has(form)) return;
      event.preventDefault();
      event.stopImmediatePropagation();
    },
    true
  );

  // Last of all (on window, bubbling): a full-page send nobody cancelled is leaving; mark it. htmx cancels the
  // submit event of its forms and sends them itself: those are marked by htmx:beforeRequest below, which a
  // refused confirm (hx-confirm) never reaches.
  window.addEventListener("submit", function (event) {
    var form = event.target;
    if (!guarded(form) || event.defaultPrevented || htmxPost(form)) return;
    markBusy(form, event.submitter);
  });

  document.addEventListener("htmx:beforeRequest", function (event) {
    var form = event.detail && event.detail.elt;
    if (!guarded(form) || !htmxPost(form)) return;
    var submitter = event.detail.requestConfig && event.detail.requestConfig.triggeringEvent;
    markBusy(form, submitter && submitter.submitter);
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.detail && event.detail.elt;
    if (form && sending.has(form)) release(form);
  });

  // A page brought back by Back or Forward is the page as it was left: its pressed button still busy.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    document.querySelectorAll("form[aria-busy]").forEach(function (form) {
      release(form);
    });
  });

  var kept = new WeakMap();

  function typedIn(root) {
    var values = {};
    root.querySelectorAll("textarea[name], input[name]:not([type]), input[name][type=text]").forEach(function (f) {
      if (f.value) values[f.name] = f.value;
    });
    // Text already kept from an earlier swap stays kept.
    root.querySelectorAll("[data-kept-for]").forEach(function (box) {
      var name = box.getAttribute("data-kept-for");
      if (box.value && !values[name]) values[name] = box.value;
    });
    return values;
  }

  function restore(root, values) {
    Object.keys(values).forEach(function (name) {
      var field = root.querySelector('[name="' + name + '"]');
      if (field) {
        if (!field.value) field.value = values[name];
        return;
      }
      var box = root.querySelector('[data-kept-for="' + name + '"]');
      if (box) {
        box.value = values[name];
        var holder = box.closest("[data-kept-box]");
        if (holder) holder.classList.remove("d-none");
      }
    });
  }

  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail && event.detail.target;
    if (target && target.hasAttribute && target.hasAttribute("data-keep-typed")) kept.set(target, typedIn(target));
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail && event.detail.target;
    if (!target) return;
    var values = kept.get(target);
    if (values) {
      kept.delete(target);
      restore(target, values);
    }
    updateCounters(target);
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      updateCounters();
    });
  } else {
    updateCounters();
  }
})();
