/* cortexmap report: draw the inlined plotly figures, sortable tables, nav highlighting.
   Any error lands in #errors; <body data-rendered="1"> is set once every figure has been drawn. */
(function () {
  "use strict";
  var errors = document.getElementById("errors");
  function report(message) {
    var line = document.createElement("div");
    line.textContent = String(message);
    errors.appendChild(line);
    document.body.setAttribute("data-errors", String(errors.childNodes.length));
  }
  window.addEventListener("error", function (e) { report(e.message || e); });
  window.addEventListener("unhandledrejection", function (e) { report(e.reason && e.reason.message || e.reason); });

  function drawFigures() {
    var specs = JSON.parse(document.getElementById("figure-data").textContent);
    var config = { displaylogo: false, responsive: true,
                   modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"],
                   toImageButtonOptions: { format: "svg", scale: 2 } };
    var nodes = document.querySelectorAll(".figure[data-figure]");
    var jobs = [];
    nodes.forEach(function (node) {
      var spec = specs[node.getAttribute("data-figure")];
      if (!spec) { report("no data for figure " + node.getAttribute("data-figure")); return; }
      jobs.push(Plotly.newPlot(node, spec.data, spec.layout, config).catch(function (err) {
        report(node.id + ": " + (err && err.message || err));
      }));
    });
    return Promise.all(jobs);
  }

  function sortTable(th) {
    var table = th.closest("table");
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var dir = th.getAttribute("data-dir") === "asc" ? "desc" : "asc";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-dir"); });
    th.setAttribute("data-dir", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[index].getAttribute("data-v"), y = b.cells[index].getAttribute("data-v");
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return dir === "asc" ? cmp : -cmp;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function wireTables() {
    document.querySelectorAll("table.sortable th").forEach(function (th) {
      th.addEventListener("click", function () { sortTable(th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sortTable(th); } });
    });
    document.querySelectorAll("input.filter[data-table]").forEach(function (input) {
      var table = document.getElementById(input.getAttribute("data-table"));
      input.addEventListener("input", function () {
        var q = input.value.toLowerCase();
        Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
          row.style.display = row.textContent.toLowerCase().indexOf(q) >= 0 ? "" : "none";
        });
      });
    });
  }

  function wireNav() {
    var links = Array.prototype.slice.call(document.querySelectorAll(".nav a"));
    var targets = links.map(function (a) { return document.getElementById(a.getAttribute("href").slice(1)); });
    function update() {
      var current = 0;
      targets.forEach(function (t, i) { if (t && t.getBoundingClientRect().top < 120) { current = i; } });
      links.forEach(function (a, i) { a.classList.toggle("active", i === current); });
    }
    window.addEventListener("scroll", update, { passive: true });
    update();
  }

  try {
    wireTables();
    wireNav();
    drawFigures().then(function () {
      document.body.setAttribute("data-height", String(document.documentElement.scrollHeight));
      document.body.setAttribute("data-rendered", "1");
    });
  } catch (err) {
    report(err && err.message || err);
  }
})();
