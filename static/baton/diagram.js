// Renders every .diagram[data-dot] with viz.js, again after htmx swaps new content in. Also the one drawing loop
// of every diagram kind (window.batonDrawDiagrams): diagram-zoom.js draws the instance page's with it.
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

  // Draw each element matching `selector` (a [data-dot] holding Graphviz DOT) under `root` whose DOT changed since
  // it was last drawn, then `sized(el, svg)`; a DOT viz.js cannot draw leaves a message in its place.
  function draw(selector, root, sized) {
    var nodes = (root || document).querySelectorAll(selector);
    if (!nodes.length || typeof Viz === "undefined") return;
    vizPromise = vizPromise || Viz.instance();
    vizPromise.then(function (viz) {
      nodes.forEach(function (el) {
        var dot = el.getAttribute("data-dot");
        if (!dot || el.dataset.rendered === dot) return;
        try {
          var svg = viz.renderSVGElement(dot);
          el.replaceChildren(svg);
          sized(el, svg);
          el.dataset.rendered = dot;
        } catch (err) {
          el.textContent = "The diagram could not be drawn.";
        }
      });
    });
  }

  function render(root) { draw(".diagram[data-dot]", root, fit); }
  document.addEventListener("DOMContentLoaded", function () { render(document); });
  document.body && document.body.addEventListener("htmx:afterSwap", function (evt) { render(evt.target); });
  window.batonRenderDiagrams = render;
  window.batonDrawDiagrams = draw;
})();
