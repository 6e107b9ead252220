// Renders every .diagram[data-dot] with viz.js, again after htmx swaps new content in.
(function () {
  "use strict";
  var vizPromise = null;
  function render(root) {
    var nodes = (root || document).querySelectorAll(".diagram[data-dot]");
    if (!nodes.length || typeof Viz === "undefined") return;
    vizPromise = vizPromise || Viz.instance();
    vizPromise.then(function (viz) {
      nodes.forEach(function (el) {
        var dot = el.getAttribute("data-dot");
        if (!dot || el.dataset.rendered === dot) return;
        try {
          var svg = viz.renderSVGElement(dot);
          svg.setAttribute("width", "100%");
          svg.removeAttribute("height");
          el.replaceChildren(svg);
          el.dataset.rendered = dot;
        } catch (err) {
          el.textContent = "The diagram could not be drawn.";
        }
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { render(document); });
  document.body && document.body.addEventListener("htmx:afterSwap", function (evt) { render(evt.target); });
  window.batonRenderDiagrams = render;
})();
