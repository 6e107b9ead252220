// Renders every .diagram-zoom[data-dot] with viz.js at a readable size and does not shrink it to fit on its own:
// Graphviz sizes are points, drawn here at 1.25 px per point (edge labels of 9 pt come out at about 15 px, node labels
// at 18 px, both above the page's small text). The box scrolls; drag pans it; the zoom buttons go up to 300 %, and
// "Whole diagram" shrinks a drawing wider or taller than its box until all of it shows (zoom out then goes no
// further than that), for the operator who wants the overview and accepts smaller labels. Each drawing opens on the
// step where the instance is (reveal), not on the start.
(function () {
  "use strict";
  var BASE = 1.25;
  var zoom = 1;
  var MAX = 3;

  // The zoom at which the first drawing on the page fits its box (at most 1: a small drawing is not blown up).
  function fitting() {
    var el = document.querySelector(".diagram-zoom");
    var svg = el && el.querySelector("svg");
    var pan = el && el.closest(".diagram-pan");
    if (!svg || !pan || !svg.dataset.w) return 1;
    var w = parseFloat(svg.dataset.w) * BASE, h = parseFloat(svg.dataset.h) * BASE;
    // The room inside the box's padding (its height is bounded by max-height, a border-box size under Bootstrap),
    // less a pixel each way so that rounding leaves no scroll bar.
    var cs = getComputedStyle(pan);
    var px = function (name) { return parseFloat(cs[name]) || 0; };
    var width = pan.clientWidth - px("paddingLeft") - px("paddingRight") - 1;
    var tall = px("maxHeight") ? px("maxHeight") - px("borderTopWidth") - px("borderBottomWidth") : pan.clientHeight;
    var height = tall - px("paddingTop") - px("paddingBottom") - 1;
    var fit = Math.min(width / w, height / h);
    return Math.max(0.1, Math.min(1, fit));
  }

  function size(el) {
    var svg = el.querySelector("svg");
    if (!svg) return;
    var w = parseFloat(svg.dataset.w || svg.getAttribute("width"));
    var h = parseFloat(svg.dataset.h || svg.getAttribute("height"));
    if (!w || !h) return;
    svg.dataset.w = w;
    svg.dataset.h = h;
    svg.setAttribute("width", Math.round(w * BASE * zoom) + "px");
    svg.setAttribute("height", Math.round(h * BASE * zoom) + "px");
  }

  // Where the instance is: the first step that needs a person's eye (dead, then failed), else one at work. A
  // diagram wider than its box would otherwise open on the start and hide the failed step off to the right.
  var WHERE = [".step-dead", ".step-failed", ".step-running", ".step-scheduled"];

  function reveal(el) {
    var pan = el.closest(".diagram-pan");
    if (!pan) return;
    var node = null;
    for (var i = 0; i < WHERE.length && !node; i++) node = el.querySelector("g.node" + WHERE[i]);
    if (!node) return;
    var box = node.getBoundingClientRect();
    var view = pan.getBoundingClientRect();
    pan.scrollLeft += box.left + box.width / 2 - (view.left + view.width / 2);
    pan.scrollTop += box.top + box.height / 2 - (view.top + view.height / 2);
  }

  // The drawing loop is diagram.js's (loaded first); this file adds the size, the zoom, the pan and where it opens.
  function render(root) {
    window.batonDrawDiagrams(".diagram-zoom[data-dot]", root, function (el) { size(el); reveal(el); });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-zoom]");
    if (!button) return;
    var how = button.getAttribute("data-zoom");
    var least = fitting();
    if (how === "in") zoom = Math.min(MAX, zoom + 0.25);
    else if (how === "out") zoom = Math.max(least, zoom - 0.25);
    else if (how === "fit") zoom = least;
    else zoom = 1;
    document.querySelectorAll(".diagram-zoom").forEach(size);
    document.querySelectorAll('[data-zoom="reset"]').forEach(function (b) { b.textContent = Math.round(zoom * 100) + " %"; });
  });

  // Drag to pan (a mouse; touch screens scroll the box natively).
  document.addEventListener("mousedown", function (event) {
    var pan = event.target.closest(".diagram-pan");
    if (!pan || event.button !== 0) return;
    var x = event.clientX, y = event.clientY, left = pan.scrollLeft, top = pan.scrollTop;
    pan.classList.add("is-dragging");
    function move(e) { pan.scrollLeft = left - (e.clientX - x); pan.scrollTop = top - (e.clientY - y); }
    function up() { pan.classList.remove("is-dragging"); document.removeEventListener("mousemove", move); document.removeEventListener("mouseup", up); }
    document.addEventListener("mousemove", move);
    document.addEventListener("mouseup", up);
  });

  document.addEventListener("DOMContentLoaded", function () { render(document); });
  document.body && document.body.addEventListener("htmx:afterSwap", function (evt) { render(evt.target); });
  window.batonRenderZoomDiagrams = render;
})();
