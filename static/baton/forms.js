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
        var shown = form.querySelector("[data-body-too-large]");
        if (shown) shown.classList.add("d-none");
        return;
      }
      var box = boxOf(form, max);
      event.preventDefault();
      event.stopImmediatePropagation();
      box.querySelectorAll("[data-body-size]").forEach(function (place) {
        place.textContent = size.toLocaleString("en-US");
      });
      box.classList.remove("d-none");
      box.focus();
    },
    true
  );

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
