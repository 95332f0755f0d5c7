"""The loss curve as an inline SVG string: no plotting library, the same in every gradio version."""
from __future__ import annotations

import html
from typing import List, Sequence, Tuple

MAX_POINTS = 400  # drawn points; longer runs are thinned evenly (the last point is always kept)


def thin(points: Sequence[Tuple[float, float]], limit: int = MAX_POINTS) -> List[Tuple[float, float]]:
    """At most `limit` points, evenly spaced, keeping the first and the last."""
    points = list(points)
    if len(points) <= limit:
        return points
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def smooth(values: Sequence[float], weight: float = 0.9) -> List[float]:
    """Exponential moving average with bias correction (TensorBoard-style smoothing)."""
    out, avg = [], 0.0
    for i, value in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * value
        out.append(avg / (1 - weight ** i))
    return out


def _polyline(xs: Sequence[float], ys: Sequence[float], css_class: str, stroke: str, width: float) -> str:
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    return (f'<polyline class="{css_class}" fill="none" stroke="{stroke}" stroke-width="{width}" '
            f'points="{coords}"/>')


def loss_svg(points: Sequence[Sequence[float]], width: int = 640, height: int = 220) -> str:
    """An SVG chart of [step, loss] pairs (raw and smoothed); a short note when there are none yet."""
    pts = [(float(s), float(v)) for s, v in points if v == v]  # drop NaN
    if not pts:
        return '<div class="lt-chart lt-chart-empty" data-points="0">No loss values yet.</div>'
    shown = thin(pts)
    steps = [s for s, _ in shown]
    losses = [v for _, v in shown]
    smoothed = thin(list(zip([s for s, _ in pts], smooth([v for _, v in pts]))))
    lo, hi = min(losses), max(losses)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    left, right, top, bottom = 56, 12, 12, 28

    def sx(step: float) -> float:
        return left + (step - x0) / (x1 - x0) * (width - left - right)

    def sy(value: float) -> float:
        return top + (hi - value) / (hi - lo) * (height - top - bottom)

    raw = _polyline([sx(s) for s in steps], [sy(v) for v in losses], "lt-loss-raw", "#8fa8c8", 1)
    avg = _polyline([sx(s) for s, _ in smoothed], [sy(v) for _, v in smoothed], "lt-loss-smooth", "#e0702a", 2)
    label = html.escape(f"loss {pts[-1][1]:.4f} at step {int(pts[-1][0])}")
    frame = (f'<rect class="lt-chart-frame" x="{left}" y="{top}" width="{width - left - right}" '
             f'height="{height - top - bottom}" fill="none" stroke="currentColor" stroke-opacity="0.3"/>')
    labels = (_text(left - 4, top + 10, f"{hi:.3g}", "end") + _text(left - 4, height - bottom, f"{lo:.3g}", "end")
              + _text(left, height - 8, f"step {int(x0)}", "start")
              + _text(width - right, height - 8, f"step {int(x1)}", "end"))
    return (f'<svg class="lt-chart" data-points="{len(pts)}" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img" aria-label="{label}" xmlns="http://www.w3.org/2000/svg">'
            f'{frame}{labels}{raw}{avg}<title>{label}</title></svg>')


def _text(x: float, y: float, text: str, anchor: str) -> str:
    return (f'<text class="lt-chart-label" fill="currentColor" font-size="11" x="{x}" y="{y}" '
            f'text-anchor="{anchor}">{html.escape(text)}</text>')
