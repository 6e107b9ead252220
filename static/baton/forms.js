/*
 * Baton forms: plain JS, no build step, loaded on every page after htmx.
 *
 * - Counters: an element [data-counter-for="NAME"] shows how many characters the field NAME of its form holds
 *   out of its maxlength (" (12 of 4000 used)"), updated as the person types.
 * - Typed text survives live swaps: before htmx replaces the content of an element marked [data-keep-typed],
 *   the text typed into its textareas and text inputs is kept; after the swap it goes back into the field of
 *   the same name, or, when the new content has no such field (someone else claimed the task), into the
 *   read-only box [data-kept-for="NAME"], which is then shown. Nothing typed is lost to a refresh.
 * - Bodies too large to send: a form marked [data-body-max="BYTES"] (the server's DATA_UPLOAD_MAX_MEMORY_SIZE,
 *   which Django enforces before any view, answering with an error page and losing what was typed) is not sent
 *   when its fields, counted as Django counts them, pass that many bytes: its box [data-body-too-large] is shown
 *   instead, with the size in its [data-body-size], and the typed text stays where it is.
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

  // Bytes a form's fields count against Django's DATA_UPLOAD_MAX_MEMORY_SIZE in a multipart body: each field's
  // name plus 2, and its value in UTF-8 with every line break sent as CR LF (as browsers send a textarea's).
  function bodyBytes(form, submitter) {
    var data;
    try {
      data = submitter ? new FormData(form, submitter) : new FormData(form);
    } catch (error) {
      data = new FormData(form); // a browser without the submitter argument: a button's name is a few bytes
    }
    var encoder = new TextEncoder();
    var size = 0;
    data.forEach(function (value, name) {
      if (typeof value !== "string") return; // a file: Django does not count uploads against this limit
      size += name.length + 2 + encoder.encode(value.replace(/\r\n|\r|\n/g, "\r\n")).length;
    });
    return size;
  }

  // Capturing, so it runs before any other submit handler (htmx's included) and can stop the send.
  document.addEventListener(
    "submit",
    function (event) {
      var form = event.target;
      if (!form || !form.getAttribute) return;
      var max = Number(form.getAttribute("data-body-max"));
      if (!max) return;
      var box = form.querySelector("[data-body-too-large]");
      if (!box) return; // nowhere to say it: the server's answer says it (its 413 page)
      var size = bodyBytes(form, event.submitter);
      if (size <= max) {
        box.classList.add("d-none");
        return;
      }
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
