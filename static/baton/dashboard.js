// The dashboard's chart, from the JSON the page carries (templates/console/dashboard.html).
(function () {
  "use strict";
  var source = document.getElementById("dashboard-data");
  var canvas = document.getElementById("chart-timeline");
  if (!source || !canvas || typeof Chart === "undefined") return;
  var data = JSON.parse(source.textContent);
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [
        { label: "Started", data: data.started, backgroundColor: "#0d6efd" },
        { label: "Completed", data: data.completed, backgroundColor: "#198754" },
        { label: "Failed or compensated", data: data.failed, backgroundColor: "#dc3545" }
      ]
    },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        x: { ticks: { autoSkip: true, maxRotation: 0, font: { size: 12 } } },
        y: { beginAtZero: true, ticks: { precision: 0, font: { size: 12 } } }
      },
      plugins: { legend: { position: "bottom", labels: { font: { size: 13 } } } }
    }
  });
})();
