"""The report as one HTML page: inline CSS and SVG, no script, nothing fetched.

Every value from the base dir is user data (file names, reasons, set names, version
metadata) and goes through ``text``: control characters and bidi overrides shown as
escapes (``display_name``), then ``html.escape``. The page's Content-Security-Policy
forbids scripts and every fetch, so even markup that slipped through could neither run nor
reach the network. Tables are plain HTML: readable without JavaScript, and from ``file://``.
"""

from __future__ import annotations

import math
from html import escape

from trainer.report import charts
from trainer.spool.item import display_name

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:12px 20px;
color:#222;background:#fff}
h1{font-size:20px;margin:4px 0}h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:10px 0 4px}
table{border-collapse:collapse;margin:4px 0 8px;font-size:13px}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777}.bad{color:#b00020}.ok{color:#1b7f3b}
.chart{width:100%;height:auto;display:block}
.chart .axis{stroke:#888;fill:none}.chart .grid{stroke:#eee;fill:none}
.chart .marker{stroke:#bbb;stroke-dasharray:3 3;fill:none}
.chart .line{fill:none;stroke-width:1.5}
.chart text{font-size:11px;fill:#555}.chart .empty{font-size:14px;fill:#999}
.grid2{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:8px}
.bar{background:#eee;height:10px;width:300px;display:inline-block;vertical-align:middle}
.bar span{background:#1f77b4;height:10px;display:block}
figure{margin:0}figcaption{font-size:12px;color:#555;overflow-wrap:anywhere}details{margin:2px 0}summary{cursor:pointer}
"""


def text(value: object) -> str:
    """Any value as escaped text: None as a dash, numbers short, strings escaped twice over."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return escape(f"{value:.4g}" if math.isfinite(value) else str(value))
    if isinstance(value, int):
        return f"{value:,}"
    return escape(display_name(str(value)))


def size(n: object) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "\u2014"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def duration(seconds: object) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "\u2014"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), cls: str = "") -> str:
    """``rows`` hold markup already escaped (``text``...); headers are ours."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    head = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""  # a key/value table has no header
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}>{head}<tbody>{body}</tbody></table>"


def more(total: int, shown: int) -> str:
    return f'<p class="muted">\u2026 and {total - shown:,} more</p>' if total > shown else ""


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def chart(c: charts.Chart | None) -> str:
    return charts.render(c) if c is not None else ""


def document(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>\n")
