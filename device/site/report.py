"""The acceptance report for a clinic's governance group: one HTML file that needs nothing else (its
style and its two plots are inside it, nothing is fetched), reads on a screen and prints on A4.

The plots are drawn as inline SVG here: the appliance carries no plotting library (matplotlib is a
training extra), and an ROC curve and a reliability diagram are a few lines and circles.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, is_undefined, select_autoescape
from markupsafe import Markup

from device.site.acceptance import AcceptanceDocument, rule_words

TEMPLATES = Path(__file__).resolve().parent / "templates"
SIDE, PAD = 300, 42  # plot square and the margin for its axes, in SVG units


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    missing = lambda v: v is None or is_undefined(v)  # noqa: E731 - a figure a subgroup has not
    env.filters["pct"] = lambda v: "-" if missing(v) else f"{100 * v:.1f}%"
    env.filters["num"] = lambda v, digits=3: "-" if missing(v) else f"{v:.{digits}f}"
    env.filters["ci"] = lambda v: "" if missing(v) or not v else f"({100 * v[0]:.1f}-{100 * v[1]:.1f}%)"
    env.filters["ci_num"] = lambda v: "" if missing(v) or not v else f"({v[0]:.3f}-{v[1]:.3f})"
    return env


def _x(v: float) -> float:
    return PAD + v * SIDE


def _y(v: float) -> float:
    return PAD + (1 - v) * SIDE


def _frame(x_label: str, y_label: str, title: str) -> list[str]:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {SIDE + 2 * PAD} {SIDE + 2 * PAD}" '
             f'role="img" aria-label="{escape(title)}" class="plot">',
             f'<rect x="{PAD}" y="{PAD}" width="{SIDE}" height="{SIDE}" fill="#fff" stroke="#333"/>']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{_x(t)}" y1="{_y(0)}" x2="{_x(t)}" y2="{_y(1)}" stroke="#e3e3e3"/>'
                     f'<line x1="{_x(0)}" y1="{_y(t)}" x2="{_x(1)}" y2="{_y(t)}" stroke="#e3e3e3"/>'
                     f'<text x="{_x(t)}" y="{_y(0) + 15}" text-anchor="middle">{t:g}</text>'
                     f'<text x="{_x(0) - 6}" y="{_y(t) + 4}" text-anchor="end">{t:g}</text>')
    parts.append(f'<line x1="{_x(0)}" y1="{_y(0)}" x2="{_x(1)}" y2="{_y(1)}" stroke="#999" stroke-dasharray="4 4"/>'
                 f'<text x="{_x(0.5)}" y="{SIDE + 2 * PAD - 6}" text-anchor="middle">{escape(x_label)}</text>'
                 f'<text transform="translate(12 {_y(0.5)}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>')
    return parts


def roc_svg(roc: dict, points: list[dict]) -> Markup:
    """The ROC curve with the model's own point (circle) and the proposed site point (square)."""
    parts = _frame("1 - specificity (normals flagged)", "sensitivity", "ROC curve of the site's cases")
    line = " ".join(f"{_x(f):.1f},{_y(t):.1f}" for f, t in zip(roc["fpr"], roc["tpr"]))
    parts.append(f'<polyline points="{line}" fill="none" stroke="#1f5fa8" stroke-width="2"/>')
    for point in points:
        x, y = _x(1 - point["specificity"]), _y(point["sensitivity"])
        if point["name"] == "the model's own point":
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="#fff" stroke="#b00020" stroke-width="2.5"/>')
        elif point["name"] == "proposed site point":
            parts.append(f'<rect x="{x - 6:.1f}" y="{y - 6:.1f}" width="12" height="12" fill="#0a7d36"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def calibration_svg(calibration: dict) -> Markup:
    """Reliability: each tenth of the score's mean against the share of positives, circles by size."""
    parts = _frame("model score (mean within the tenth)", "share of positive cases", "Calibration of the score")
    largest = max((b["n"] for b in calibration["bins"]), default=1)
    for b in calibration["bins"]:
        r = 3 + 9 * (b["n"] / largest) ** 0.5
        parts.append(f'<circle cx="{_x(b["mean_score"]):.1f}" cy="{_y(b["observed"]):.1f}" r="{r:.1f}" '
                     f'fill="#1f5fa8" fill-opacity="0.55" stroke="#1f5fa8"><title>{b["n"]} cases</title></circle>')
    parts.append("</svg>")
    return Markup("".join(parts))


def render(document: AcceptanceDocument, command: str) -> str:
    """report.html of an acceptance."""
    f = document.figures
    template = _environment().get_template("acceptance_report.html")
    return template.render(
        d=document, f=f, command=command,
        rule=rule_words(document.rule, document.positive_class),
        roc=roc_svg(f["roc"], f["points"]) if "roc" in f else None,
        calibration=calibration_svg(f["calibration"]) if "calibration" in f else None,
    )
