"""The HTML page around the figures: one inline style sheet, one small inline script (hover shows
the nearest point's value; a legend entry hides or shows its series in every panel of its
figure), tables, and nothing that the browser would fetch. Printed, the tooltips go away, the
figures do not split across pages and hidden series stay hidden (their legend entry struck out)."""

from __future__ import annotations

import html

from loadgen.report.figure import DASHES, PALETTE, Figure
from loadgen.report.svg_chart import panel_svg

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;
padding:0 1em;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:12.5px}td,th{border:1px solid #ccc;padding:2px 7px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.bad{color:#b00000}.good{color:#006d2c}.warn{border:2px solid #b00000;background:#fff3f0;padding:.5em 1em;
margin:1em 0}.warn strong{color:#b00000}
code{background:#f6f6f6;padding:1px 4px}
figure.chart{margin:1em 0;border:1px solid #e3e3e3;padding:.5em;break-inside:avoid;page-break-inside:avoid}
figure.chart figcaption{font-weight:600;margin-bottom:.3em}
.panels{display:grid;gap:.4em}
svg.panel{width:100%;height:auto;font-size:11px;overflow:visible}
svg.panel .plot{fill:#fff;stroke:#999}svg.panel .grid{stroke:#e6e6e6}svg.panel .tick{fill:#444}
svg.panel .ptitle{font-weight:600;font-size:12.5px;fill:#222}svg.panel .alabel{fill:#333}
svg.panel .nodata{fill:#999;font-size:14px}
svg.panel .hover{fill:none;stroke:#222;stroke-width:1.5;pointer-events:none;visibility:hidden}
svg.panel .hover.on{visibility:visible}
g.series.off{display:none}
.legend{display:flex;flex-wrap:wrap;gap:.3em .9em;margin:.2em 0 .4em}
.legend button{font:inherit;font-size:12px;background:none;border:1px solid #ccc;border-radius:3px;
padding:1px 6px;cursor:pointer;display:inline-flex;align-items:center;gap:.4em}
.legend button.off{opacity:.45;text-decoration:line-through}
.tip{position:absolute;display:none;background:#222;color:#fff;font-size:12px;padding:3px 7px;border-radius:3px;
pointer-events:none;white-space:nowrap;z-index:10}
.note{color:#555;font-size:12px;margin:.2em 0}
@media print{body{margin:0;max-width:none}.tip,svg.panel .hover{display:none}
.panels{grid-template-columns:repeat(2,minmax(0,1fr))!important}table{font-size:9px}td,th{padding:1px 3px}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}h2{break-after:avoid}}
"""

SCRIPT = """
(function () {
  var tip = document.createElement('div');
  tip.className = 'tip';
  document.body.appendChild(tip);
  function fmt(v) { return Math.abs(v) >= 1e4 ? Math.round(v).toLocaleString('en') : String(+v.toPrecision(4)); }
  function points(g) { if (!g._pts) { g._pts = JSON.parse(g.getAttribute('data-points')); } return g._pts; }
  document.querySelectorAll('svg.panel').forEach(function (svg) {
    var hover = svg.querySelector('circle.hover');
    if (!hover) { return; }
    function hide() { tip.style.display = 'none'; hover.classList.remove('on'); }
    svg.addEventListener('mousemove', function (ev) {
      var pt = svg.createSVGPoint();
      pt.x = ev.clientX; pt.y = ev.clientY;
      var p = pt.matrixTransform(svg.getScreenCTM().inverse());
      var best = null, bestD = 30 * 30;
      svg.querySelectorAll('g.series').forEach(function (g) {
        if (g.classList.contains('off')) { return; }
        points(g).forEach(function (q) {
          var d = (q[0] - p.x) * (q[0] - p.x) + (q[1] - p.y) * (q[1] - p.y);
          if (d < bestD) { bestD = d; best = [g, q]; }
        });
      });
      if (!best) { hide(); return; }
      var q = best[1];
      hover.setAttribute('cx', q[0]); hover.setAttribute('cy', q[1]);
      hover.classList.add('on');
      tip.textContent = best[0].getAttribute('data-series') + ': ' + fmt(q[3]) + ' ' +
        svg.getAttribute('data-ylabel') + ' at ' + svg.getAttribute('data-xlabel') + ' ' + fmt(q[2]);
      tip.style.left = (ev.pageX + 14) + 'px'; tip.style.top = (ev.pageY + 14) + 'px';
      tip.style.display = 'block';
    });
    svg.addEventListener('mouseleave', hide);
  });
  document.querySelectorAll('.legend button').forEach(function (b) {
    b.addEventListener('click', function () {
      var off = !b.classList.contains('off'), name = b.getAttribute('data-series');
      b.classList.toggle('off', off);
      b.setAttribute('aria-pressed', off ? 'false' : 'true');
      b.closest('figure').querySelectorAll('g.series').forEach(function (g) {
        if (g.getAttribute('data-series') === name) { g.classList.toggle('off', off); }
      });
    });
  });
})();
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def table(header: list, rows: list[list], row_classes: list[str] | None = None) -> str:
    """Cells are text, or (text, css class) pairs."""
    def cell(c, tag):
        text, cls = c if isinstance(c, tuple) else (c, "")
        return f"<{tag}{f' class={chr(39)}{cls}{chr(39)}' if cls else ''}>{esc(text)}</{tag}>"
    head = "".join(cell(h, "th") for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes else ""
        body.append(f"<tr{f' class={chr(39)}{cls}{chr(39)}' if cls else ''}>" + "".join(cell(c, "td") for c in row)
                    + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _swatch(color: int, dash: int) -> str:
    pattern = DASHES[dash % len(DASHES)]
    dash_attr = f" stroke-dasharray='{pattern}'" if pattern else ""
    return (f"<svg width='26' height='10' aria-hidden='true'><line x1='1' y1='5' x2='25' y2='5' "
            f"stroke='{PALETTE[color % len(PALETTE)]}' stroke-width='2.2'{dash_attr}/></svg>")


def figure_html(figure: Figure, png_name: str | None = None) -> str:
    legend = "".join(f"<button type='button' aria-pressed='true' data-series='{esc(s.name)}' "
                     f"title='show or hide {esc(s.name)}'>{_swatch(s.color, s.dash)}{esc(s.name)}</button>"
                     for s in figure.legend())
    columns = max(1, min(figure.columns, len(figure.panels)))
    panels = []
    for i, panel in enumerate(figure.panels):
        svg = panel_svg(panel, f"{figure.key}-{i}")
        panels.append(svg.replace("<svg class='panel'", f"<svg class='panel' data-xlabel='{esc(panel.x_label)}' "
                                                          f"data-ylabel='{esc(panel.y_label)}'", 1))
    note = f"<p class='note'>{esc(figure.note)}</p>" if figure.note else ""
    png = f"<p class='note'>PNG: <code>{esc(png_name)}</code></p>" if png_name else ""
    return (f"<figure class='chart' id='fig-{figure.key}'><figcaption>{esc(figure.title)}</figcaption>"
            f"<div class='legend'>{legend}</div>"
            f"<div class='panels' style='grid-template-columns:repeat({columns},minmax(0,500px))'>{''.join(panels)}</div>"
            f"{note}{png}</figure>")


def page(title: str, body: list[str]) -> str:
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            # The page may fetch nothing: no script, style, font, image or frame from anywhere.
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
            "script-src 'unsafe-inline'; style-src 'unsafe-inline'\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><h1>{esc(title)}</h1>"
            + "\n".join(body) + f"<script>{SCRIPT}</script></body></html>")
