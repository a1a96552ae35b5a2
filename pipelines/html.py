"""The one HTML page every leakstore report is written into: its style sheet, and images inlined.

A report is one self-contained file (images as data URIs), so it can be mailed or attached to case
notes as it is."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:92%}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}
.warn{background:#fee;padding:.6em;border:1px solid #c66}
tr.ci td,tr.sup td{color:#555;font-size:92%}tr.sup td{background:#f4f7fb}tr.conflict td{background:#fff3e0}"""


def img(path: Path) -> str:
    """An <img> holding the PNG at `path` inline."""
    return f'<img src="data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()}">'


def page(title: str, body: str) -> str:
    """A whole HTML document: `title` (plain text) as its title and first heading, `body` (HTML) after it."""
    t = html.escape(title)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{t}</title>\n<style>{STYLE}</style>\n'
        f"</head><body><h1>{t}</h1>{body}</body></html>\n"
    )
