// Proposes the browser's time zone: on the settings page (fills the field), and in a banner on any page for a
// person who has not chosen a zone yet and whose browser is in another zone than the one the pages use.
(function () {
  "use strict";
  var browserZone = "";
  try {
    browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (e) {
    return;
  }
  if (!browserZone) return;

  var proposal = document.getElementById("tz-proposal");
  if (proposal) {
    var field = document.getElementById("id_time_zone");
    if (field && field.value !== browserZone) {
      proposal.querySelector("[data-browser-zone]").textContent = browserZone;
      proposal.classList.remove("d-none");
      proposal.querySelector("[data-use-browser-zone]").addEventListener("click", function () {
        field.value = browserZone;
        field.focus();
      });
    }
  }

  var banner = document.getElementById("tz-banner");
  if (banner && banner.dataset.pageZone !== browserZone && !sessionStorage.getItem("baton-tz-dismissed")) {
    banner.querySelectorAll("[data-browser-zone]").forEach(function (el) { el.textContent = browserZone; });
    banner.querySelector("input[name=time_zone]").value = browserZone;
    banner.classList.remove("d-none");
    banner.addEventListener("closed.bs.alert", function () { sessionStorage.setItem("baton-tz-dismissed", "1"); });
  }
})();
