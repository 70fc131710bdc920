"""report.html: the report's Markdown as one self-contained page (inline CSS, no scripts, nothing fetched)."""

from __future__ import annotations


REPORT_CSS = """
:root{color-scheme:light;--ink:#1d1d1f;--muted:#5f6368;--line:#dadce0;--stripe:#f6f7f9;--accent:#1a5fb4}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);
 max-width:72rem;margin:1.5rem auto;padding:0 1.2rem;line-height:1.5;font-size:15px}
h1{font-size:1.7rem;margin:.2em 0 .6em}h2{font-size:1.3rem;margin-top:2em;border-bottom:1px solid var(--line);
 padding-bottom:.2em}h3{font-size:1.08rem;margin-top:1.5em}
a{color:var(--accent)}p,li{max-width:52rem}
.table-wrap{overflow-x:auto;margin:1em 0;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.92em;min-width:100%}
td,th{border-bottom:1px solid var(--line);padding:4px 10px;text-align:right;white-space:nowrap}
th{background:var(--stripe);position:sticky;top:0}tr:nth-child(even) td{background:#fbfbfc}
td:first-child,th:first-child{text-align:left}td{white-space:normal}
img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
code{background:#f4f4f4;padding:0 .2em;border-radius:3px;font-size:.92em}
pre{background:#f4f4f4;padding:.6em;overflow-x:auto;border-radius:6px}
@media print{body{max-width:none}.table-wrap{overflow:visible;border:0}}
"""


def markdown_to_html(text: str, title: str) -> str:
    """A self-contained page: system fonts, inline CSS, no scripts, nothing fetched from the network (plots
    are the relative `plots/*.png` files beside it); wide tables scroll sideways instead of the page."""
    import html
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    body = body.replace("<table>", '<div class="table-wrap"><table>').replace("</table>", "</table></div>")
    style = " ".join(line.strip() for line in REPORT_CSS.strip().splitlines())
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n{body}\n</body></html>\n")
