"""report.html beside report.md: the same page as one self-contained file, its figures embedded
as data URIs. MLflow's artifact viewer shows a Markdown file as plain text and cannot follow
its relative image links; it shows an HTML file as a page. Python-Markdown does the
conversion (tables, fenced code); only the images are ours to inline.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

from orchard_app.atomic import atomic_write

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem;
       line-height: 1.45; color: #1f2328; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f6f8fa; }
img { max-width: 100%; display: block; margin: 0.5rem 0 1rem; }
pre { background: #f6f8fa; padding: 0.75rem; overflow-x: auto; font-size: 0.85rem; }
code { font-size: 0.9em; }
"""
IMG_SRC = re.compile(r'(<img\b[^>]*\bsrc=")([^"]+)(")')


def write_html(markdown_path: Path) -> Path:
    """Render `report.md` as `report.html` in the same folder; returns its path."""
    import markdown  # (imported here: only writing a report needs it)

    markdown_path = Path(markdown_path)
    text = markdown_path.read_text(encoding="utf-8")
    body = markdown.markdown(text, extensions=["tables", "fenced_code"], output_format="html")
    body = IMG_SRC.sub(lambda m: m[1] + _inline(markdown_path.parent, m[2]) + m[3], body)
    title = next(
        (line[2:].strip() for line in text.splitlines() if line.startswith("# ")), "report"
    )
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")  # fmt: skip
    out = markdown_path.with_suffix(".html")
    atomic_write(out, page)
    return out


def _inline(folder: Path, src: str) -> str:
    """A relative image path as a data URI; anything else (absent, remote) stays as it was."""
    path = folder / html.unescape(src)
    if "://" in src or src.startswith("data:") or not path.is_file():
        return src
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
