"""The self-contained HTML report (pictures embedded)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from jepa_sweeps.report.tables import html_table


def write_html(path: Path, summary: str, when: str, comparison: tuple, sections: list, notes: list[str]) -> None:
    def image(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode()
        name = html.escape(p.name)
        return f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'

    body = [f"<h1>{html.escape(summary)}</h1>", f"<p>Trials compared at {html.escape(when)}.</p>",
            "<h2>Trials</h2>", html_table(*comparison)]
    for title, content, pictures in sections:
        body.append(f"<h2>{html.escape(title)}</h2>")
        if content:
            body.append(content if content.startswith("<") else f"<p>{html.escape(content)}</p>")
        body += [image(p) for p in pictures]
    if notes:
        body += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in notes] + ["</ul>"]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left} img{max-width:100%} figure{margin:1em 0}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(summary)}</title>"
                    f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
