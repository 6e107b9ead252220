// Renders every .diagram[data-dot] with viz.js, again after htmx swaps new content in.
(function () {
  "use strict";
  var vizPromise = null;
  // Shrink a wide diagram to the card, but never below 60 % (text stays readable); beyond that it scrolls.
  function fit(el, svg) {
    var w = parseFloat(svg.getAttribute("width")) * 4 / 3; // Graphviz sizes are points
    var h = parseFloat(svg.getAttribute("height")) * 4 / 3;
    if (!w || !h) return;
    var scale = Math.max(0.6, Math.min(1, (el.clientWidth || w) / w));
    svg.setAttribute("width", Math.round(w * scale) + "px");
    svg.setAttribute("height", Math.round(h * scale) + "px");
  }

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
          el.replaceChildren(svg);
          fit(el, svg);
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
