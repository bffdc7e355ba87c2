"""The report page's inline stylesheet and script (no external resources)."""

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f5f7fa; --accent:#4C78A8; }
* { box-sizing: border-box; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--ink); background:var(--bg); }
header { position:sticky; top:0; z-index:10; background:#fff; border-bottom:1px solid var(--line); padding:12px 28px; }
header h1 { margin:0; font-size:20px; } header p { margin:4px 0 8px; color:var(--muted); font-size:13px; }
nav a { margin-right:16px; color:var(--accent); text-decoration:none; font-size:14px; font-weight:500; }
main { max-width:1200px; margin:0 auto; padding:20px; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:16px 20px; margin-bottom:20px; box-shadow:0 1px 2px rgba(0,0,0,.04); }
.card h2 { margin:0 0 10px; font-size:17px; }
.card li { margin:4px 0; font-size:13.5px; line-height:1.45; }
.muted { color:var(--muted); }
table { border-collapse:collapse; width:100%; font-size:12.5px; }
th, td { border-bottom:1px solid var(--line); padding:5px 8px; text-align:left; }
th { background:#f0f4f8; cursor:pointer; position:sticky; top:0; }
table.sortable th:hover { background:#e1e8f0; }
#errors:empty { display:none; } #errors { color:#b00020; font-weight:600; padding:8px; }
.figure { width:100%; min-height:300px; }
"""

SCRIPT = """
window.onerror = function (msg) { document.getElementById('errors').textContent += 'error: ' + msg + '\\n'; };
document.querySelectorAll('script[data-fig]').forEach(function (node) {
  try {
    var spec = JSON.parse(node.textContent);
    Plotly.newPlot(node.getAttribute('data-fig'), spec.data, spec.layout, {responsive: true, displaylogo: false});
  } catch (e) { document.getElementById('errors').textContent += 'figure ' + node.getAttribute('data-fig') + ': ' + e + '\\n'; }
});
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], rows = Array.from(body.rows), asc = th.dataset.asc !== '1';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v || a.cells[col].textContent, y = b.cells[col].dataset.v || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    th.dataset.asc = asc ? '1' : '0'; rows.forEach(function (r) { body.appendChild(r); });
  });
});
document.body.setAttribute('data-rendered', '1');
"""
