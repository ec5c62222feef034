"""The one rendering path of the report package: number formatting ("n/a" for what is missing), Markdown
escaping and tables, and HTML tables and the self-contained page skeleton. The sustainability report
(:mod:`toolchain.report.documents`) and the profile/compare pages (:mod:`toolchain.report.charts`) both use it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from typing import Any

from toolchain.report.metrics import num

NA = "n/a"

# page styles: the report's (warnings, lists, figures) and the profile/compare pages'
REPORT_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}"
              "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}td,th{border:1px solid #ccc;"
              "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
              ".warn{background:#fff3cd;border-left:4px solid #d8a03b;padding:6px 10px;font-weight:600}"
              "li{color:#444;font-size:14px}img{max-width:100%}")
CHART_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}.note{color:#555}")


# ----------------------------------------------------------------------------------------------- numbers

def fmt(x: Any, spec: str = ".4g", suffix: str = "") -> str:
    """``x`` formatted with ``spec``, or "n/a" when it is not a finite number."""
    x = num(x)
    return NA if x is None else f"{x:{spec}}{suffix}"


def fmt_big(x: Any) -> str:
    """Four significant digits without an exponent for large values (Green Scores can be large)."""
    x = num(x)
    if x is None:
        return NA
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def kind_label(kinds: Iterable[str | None]) -> str:
    """The energy kinds in words, "ESTIMATED" in capitals: e.g. "measured", "ESTIMATED/measured", "n/a"."""
    ks = sorted({k for k in kinds if k})
    return "/".join("ESTIMATED" if k == "estimated" else k for k in ks) if ks else NA


# ----------------------------------------------------------------------------------------------- Markdown

def md_escape(text: Any) -> str:
    s = str(text)
    for ch in ("\\", "`", "*", "<", ">", "[", "]"):
        s = s.replace(ch, "\\" + ch)
    return s.replace("\n", " ")


def numeric_column(rows: list[list[Any]], i: int) -> bool:
    """Whether every filled cell of column ``i`` is a number (such columns are right-aligned)."""
    cells = [str(r[i]) for r in rows if i < len(r) and str(r[i]) not in ("", NA)]
    return bool(cells) and all(c[0].isdigit() or (c[0] in "+-" and c[1:2].isdigit()) for c in cells)


def md_table(header: list[Any], rows: list[list[Any]]) -> str:
    """A Markdown table; numeric columns after the first are right-aligned."""

    def cells(row):
        return "| " + " | ".join(md_escape(c).replace("|", "\\|") for c in row) + " |"

    align = ["---:" if i and numeric_column(rows, i) else "---" for i in range(len(header))]
    return "\n".join([cells(header), "|" + "|".join(align) + "|"] + [cells(r) for r in rows])


# ----------------------------------------------------------------------------------------------- HTML

def esc(text: Any) -> str:
    """``text`` escaped for HTML, quotes included (safe in attributes too)."""
    return html.escape(str(text))


def html_table(header: list[Any], rows: list[list[Any]]) -> list[str]:
    """An HTML table as lines: the header row, one line per row, the closing tag."""
    lines = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
    lines.append("</table>")
    return lines


def png_data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def html_document(title: str, css: str, body: list[str]) -> str:
    """A self-contained HTML page: ``title``, ``css`` inline, the ``body`` lines; no external resources."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{css}</style></head><body>", *body, "</body></html>"]
    return "\n".join(parts) + "\n"
