"""Self-contained HTML reports: one stylesheet and the building blocks every report page shares.

The inspect, clean, evaluation and run reports are single files (charts and thumbnails embedded
as data URIs), so they can be mailed or archived as they are.
"""
from __future__ import annotations

import base64
import html
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:36px 0 10px;border-bottom:1px solid #e3e5e8;padding-bottom:4px}
.meta{color:#666;margin:0 0 16px;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.row{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.card{border:1px solid #e3e5e8;border-radius:8px;padding:10px 16px;min-width:120px}
.card b{display:block;font-size:22px}.card span{color:#666;font-size:12px}
.card.warn{border-color:#e8a33d;background:#fff8ec}.card.bad{border-color:#d9534f;background:#fdf0ef}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid #eceef1;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f3f4f6;position:sticky;top:0}tr:nth-child(even) td{background:#fafbfc}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}tr.total td{font-weight:600;border-top:2px solid #ccc}
td.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.badge{display:inline-block;border-radius:4px;padding:0 6px;font-size:11px;font-weight:600;color:#fff;
  background:#d9534f}
.badge.minor{background:#8c8c8c}.note{color:#666;font-size:12px}
img.chart{max-width:100%;height:auto;border:1px solid #eceef1;margin:6px 0}
.scroll{max-height:560px;overflow:auto;border:1px solid #eceef1}
"""


def png_data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def table(header: list[str], rows: Iterable[list], numeric: Collection[int] = (), total: list | None = None) -> str:
    """An HTML table; columns in ``numeric`` right-aligned, ``path``/``file`` columns in monospace."""
    def cells(values: list, tag: str = "td") -> Iterator[str]:
        for i, value in enumerate(values):
            text = f"{value:,}" if isinstance(value, int) else html.escape(str(value))
            css = "n" if i in numeric else ("path" if header[i] in ("path", "file") else "")
            yield f'<{tag} class="{css}">{text}</{tag}>' if css else f"<{tag}>{text}</{tag}>"

    lines = ["<table><thead><tr>", *cells(header, "th"), "</tr></thead><tbody>"]
    lines += [f"<tr>{''.join(cells(row))}</tr>" for row in rows]
    if total is not None:
        lines.append(f'<tr class="total">{"".join(cells(total))}</tr>')
    lines.append("</tbody></table>")
    return "".join(lines)


def card(value: int | str, label: str, css: str = "") -> str:
    """A figure with its label; ``css`` "warn" or "bad" colours it."""
    shown = f"{value:,}" if isinstance(value, int) else html.escape(value)
    classes = f"card {css}" if css else "card"
    return f'<div class="{classes}"><b>{shown}</b><span>{html.escape(label)}</span></div>'


def page(title: str, body: Sequence[str], extra_css: str = "") -> str:
    """A whole report page: the shared stylesheet (plus ``extra_css``) around ``body``."""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}{extra_css}</style></head><body><main>{''.join(body)}</main></body></html>\n"
    )
