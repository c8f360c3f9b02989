"""Simple horizontal bar charts as inline SVG, drawn on the server: no script, no external
resource, only presentation attributes (the desk's CSP allows no inline style)."""

from __future__ import annotations

from markupsafe import Markup, escape

from .i18n import gettext as _
from .inbox import Bar

WIDTH = 560
LABEL_W = 190
ROW_H = 26
BAR_H = 9
NEW_FILL = "#b4470b"
OPEN_FILL = "#0b5394"


def bar_chart(bars: list[Bar], *, title: str) -> Markup:
    """Two bars per row (open, new), scaled to the largest count, numbers beside them."""
    if not bars:
        return Markup('<p class="hint">{}</p>').format(_("No cases yet."))
    top = max(max(b.open, b.new) for b in bars) or 1
    span = WIDTH - LABEL_W - 40
    height = ROW_H * len(bars) + 24
    figures = "; ".join(_("%(label)s: %(open)s open, %(new)s new", label=b.label, open=b.open, new=b.new)
                        for b in bars)
    parts = [
        (f'<svg class="chart" role="img" width="{WIDTH}" height="{height}" '
         f'viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">'),
        f"<title>{escape(title)}</title>",
        # The figures in words: an image's title names it only, and a screen reader does not
        # read the bars' own titles inside it (WCAG 1.1.1).
        f"<desc>{escape(figures)}.</desc>",
    ]
    for i, bar in enumerate(bars):
        y = i * ROW_H + 4
        parts.append(f'<text x="{LABEL_W - 8}" y="{y + BAR_H + 4}" text-anchor="end" '
                     f'font-size="12" fill="#1b1f24">{escape(bar.label[:28])}</text>')
        for j, (value, fill, name) in enumerate(((bar.open, OPEN_FILL, _("open")), (bar.new, NEW_FILL, _("new")))):
            w = round(span * value / top)
            by = y + j * (BAR_H + 1)
            parts.append(f'<rect x="{LABEL_W}" y="{by}" width="{max(w, 1) if value else 0}" '
                         f'height="{BAR_H}" fill="{fill}"><title>{escape(bar.label)}: {value} {name}'
                         f"</title></rect>")
            parts.append(f'<text x="{LABEL_W + w + 4}" y="{by + BAR_H - 1}" font-size="10" '
                         f'fill="#4d5660">{value}</text>')
    legend_y = height - 6
    parts.append(f'<rect x="{LABEL_W}" y="{legend_y - 8}" width="10" height="8" fill="{OPEN_FILL}"/>'
                 f'<text x="{LABEL_W + 14}" y="{legend_y}" font-size="11" fill="#1b1f24">{escape(_("open"))}</text>'
                 f'<rect x="{LABEL_W + 60}" y="{legend_y - 8}" width="10" height="8" fill="{NEW_FILL}"/>'
                 f'<text x="{LABEL_W + 74}" y="{legend_y}" font-size="11" fill="#1b1f24">{escape(_("new"))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
