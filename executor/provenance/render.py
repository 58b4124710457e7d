"""Pictures for auditors: lineage graphs through Graphviz, and the one-file HTML report."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from typing import Any

from qledger.ledger.errors import QledgerError
from qledger.provenance.report import to_markdown

DOT = "dot"


class RenderError(QledgerError):
    """A picture could not be drawn."""

    hint = "install Graphviz (Debian: apt-get install graphviz), or use --format dot"


def dot_to_svg(dot: str) -> str:
    """Lay out a DOT graph with Graphviz's own ``dot`` and return the SVG."""
    program = shutil.which(DOT)
    if program is None:
        raise RenderError("the Graphviz `dot` program is not on PATH")
    done = subprocess.run([program, "-Tsvg"], input=dot, capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise RenderError(f"dot failed: {reason}")
    svg = done.stdout
    # Drop the XML prolog and DOCTYPE so the SVG can sit inline in an HTML page.
    return svg[svg.index("<svg"):]


def distribution_svg(series: dict[str, dict[str, int]], width: int = 640, height: int = 260) -> str:
    """Grouped bars of each run's outcome probabilities, outcomes in bitstring order."""
    outcomes = sorted({k for counts in series.values() for k in counts})
    colours = ["#3b6fb6", "#e07b39", "#4c9a5a", "#9b59b6"]
    if not outcomes:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    left, bottom, top = 40, 40, 20
    plot_w, plot_h = width - left - 10, height - bottom - top
    group = plot_w / len(outcomes)
    bar = group * 0.8 / max(1, len(series))
    probabilities = {name: {k: v / max(1, sum(c.values())) for k, v in c.items()}
                     for name, c in series.items()}
    peak = max((p for d in probabilities.values() for p in d.values()), default=1.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="Helvetica" font-size="10" role="img" aria-label="outcome distributions">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
             f'<text x="4" y="{top + 4}">{peak:.2f}</text>', f'<text x="4" y="{top + plot_h}">0</text>']
    for i, outcome in enumerate(outcomes):
        x0 = left + i * group + group * 0.1
        for j, (name, dist) in enumerate(probabilities.items()):
            p = dist.get(outcome, 0.0)
            h = plot_h * p / peak
            parts.append(f'<rect x="{x0 + j * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" fill="{colours[j % len(colours)]}">'
                         f'<title>{html.escape(name)} {html.escape(outcome)}: {p:.4f}</title></rect>')
        if len(outcomes) <= 32:
            parts.append(f'<text x="{x0 + group * 0.4:.1f}" y="{top + plot_h + 14}" text-anchor="middle">'
                         f'{html.escape(outcome)}</text>')
    for j, name in enumerate(probabilities):
        parts.append(f'<rect x="{left + 10 + j * 150}" y="{height - 14}" width="10" height="10" '
                     f'fill="{colours[j % len(colours)]}"/><text x="{left + 24 + j * 150}" y="{height - 5}">'
                     f'{html.escape(name[:20])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def report_html(data: dict[str, Any], lineage_svg: str) -> str:
    """The report as one self-contained HTML file: text, lineage picture, distributions plot."""
    series = {f"run {run[:8]}": counts for run, counts in data.get("counts", {}).items()}
    body = html.escape(to_markdown(data))
    # JSON is safe inside <script> once no "</" can close the element early.
    embedded = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Reproducibility report {html.escape(data['run_id'])}</title>"
        "<style>body{font-family:Helvetica,Arial,sans-serif;max-width:72em;margin:2em auto}"
        "pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}figure{margin:1em 0}"
        "figure svg{max-width:100%;height:auto}</style></head><body>"
        f"<h1>Reproducibility report</h1><pre>{body}</pre>"
        f"<figure><figcaption>Outcome distributions</figcaption>{distribution_svg(series)}</figure>"
        f"<figure><figcaption>Lineage (W3C PROV)</figcaption>{lineage_svg}</figure>"
        f"<script type=\"application/json\" id=\"report-data\">"
        f"{embedded}</script>"
        "</body></html>\n")
