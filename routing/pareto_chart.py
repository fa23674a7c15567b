"""A route's options drawn as a server-rendered SVG scatter: p95 latency against cost per
1,000 requests, quality as colour, the Pareto frontier outlined and joined. No JavaScript."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

WIDTH, HEIGHT = 760, 420
LEFT, RIGHT, TOP, BOTTOM = 86, 150, 20, 56  # the plot area's margins; the legend sits in the right one
RADIUS = 7
LOW_COLOUR, HIGH_COLOUR, UNKNOWN_COLOUR = (230, 97, 1), (94, 60, 153), "#9e9e9e"  # orange to purple
LINE_HEIGHT = 18
EMPTY_HEIGHT = 40
# More than two decades between the smallest and largest value: a log axis, or the small
# ones would sit on top of each other.
LOG_SPAN = 100.0


@dataclass(frozen=True, slots=True)
class Axis:
    lo: float
    hi: float
    log: bool
    ticks: tuple[float, ...]
    decimals: int

    def share(self, value: float) -> float:
        """Where the value lies along the axis, 0 to 1."""
        if self.log:
            return (math.log10(value) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (value - self.lo) / (self.hi - self.lo)

    def label(self, value: float) -> str:
        if self.log:
            return f"{value:,.{max(0, -math.floor(math.log10(value)))}f}"
        return f"{value:,.{self.decimals}f}"


def axis_for(values: Sequence[float]) -> Axis:
    """A log axis over whole decades when every value is positive and they span more than
    LOG_SPAN; otherwise a linear one from zero (or a little under the smallest) to a round
    number above the largest, with about five ticks."""
    lo, hi = min(values), max(values)
    if lo > 0 and hi / lo > LOG_SPAN:
        first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        return Axis(10.0**first, 10.0**last, True, tuple(10.0**k for k in range(first, last + 1)), 0)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
    lo = 0.0 if lo >= 0 and (lo == hi or lo - pad < hi - lo) else lo - pad
    step = _round_step((hi + pad - lo) / 5)
    start, stop = math.floor(lo / step) * step, math.ceil((hi + pad) / step) * step
    count = round((stop - start) / step)
    decimals = max(0, -math.floor(math.log10(step)))
    return Axis(start, stop, False, tuple(round(start + i * step, decimals + 2) for i in range(count + 1)), decimals)


def _round_step(raw: float) -> float:
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def quality_colour(quality: float | None, lo: float, hi: float) -> str:
    if quality is None:
        return UNKNOWN_COLOUR
    share = 0.5 if hi <= lo else (quality - lo) / (hi - lo)
    r, g, b = (round(a + (z - a) * share) for a, z in zip(LOW_COLOUR, HIGH_COLOUR, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def _missing(option: dict[str, Any]) -> str:
    missing = [name for name, key in (("latency", "p95_ms"), ("cost", "cost_per_1k")) if option.get(key) is None]
    return f"no {' or '.join(missing)} measured or prior"


def _tooltip(option: dict[str, Any]) -> str:
    sources = option.get("sources") or {}
    quality = option.get("quality")
    parts = [
        f"{option['option']} ({option.get('kind', 'model')})",
        f"p95 {option['p95_ms']:,.1f} ms ({sources.get('latency', '?')})",
        f"${option['cost_per_1k']:.6f} per 1,000 requests ({sources.get('cost', '?')})",
        f"quality {'unknown' if quality is None else f'{quality:.4f}'} ({sources.get('quality', '?')})",
        f"{option.get('samples', 0)} requests measured",
    ]
    if option.get("pareto"):
        parts.append("on the Pareto frontier")
    return "\n".join(parts)


def pareto_svg(options: Sequence[dict[str, Any]]) -> str:
    """The options (as `pareto_options` lists them) as an SVG scatter. Options without a
    latency or a cost are not plotted but named under the chart; every text is escaped."""
    plotted = [o for o in options if o.get("p95_ms") is not None and o.get("cost_per_1k") is not None]
    unplotted = [o for o in options if o not in plotted]
    chart_height = HEIGHT if plotted else EMPTY_HEIGHT
    height = chart_height + LINE_HEIGHT * len(unplotted) + (4 if unplotted else 0)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="pareto-chart" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" '
        'aria-label="p95 latency against cost per 1,000 requests, quality as colour" '
        'font-family="sans-serif" font-size="12">',
        "<style>.pareto-chart text{fill:var(--body-fg,#333)}.pareto-chart .grid{stroke:var(--hairline-color,#ddd)}"
        ".pareto-chart .axis{stroke:var(--body-quiet-color,#666)}</style>",
    ]
    if plotted:
        out.extend(_plot(plotted))
    else:
        message = "No option has both a latency and a cost to plot."
        if not options:
            message = "No options to plot: the route has no enabled model or cascade."
        out.append(f'<text class="empty" x="{LEFT}" y="{EMPTY_HEIGHT / 2 + 4}">{escape(message)}</text>')
    for i, option in enumerate(unplotted):
        line = f"not plotted: {option['option']} ({_missing(option)})"
        y = chart_height + 14 + LINE_HEIGHT * i
        out.append(f'<text class="not-plotted" x="{LEFT}" y="{y}">{escape(line)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _plot(plotted: list[dict[str, Any]]) -> list[str]:
    x_axis = axis_for([o["p95_ms"] for o in plotted])
    y_axis = axis_for([o["cost_per_1k"] for o in plotted])
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM

    def x(value: float) -> float:
        return round(LEFT + x_axis.share(value) * (right - LEFT), 1)

    def y(value: float) -> float:
        return round(bottom - y_axis.share(value) * (bottom - TOP), 1)

    out = [*_axes(x_axis, y_axis, x, y)]
    qualities = [o["quality"] for o in plotted if o.get("quality") is not None]
    q_lo, q_hi = (min(qualities), max(qualities)) if qualities else (0.0, 1.0)
    frontier = sorted((o for o in plotted if o.get("pareto")), key=lambda o: (o["p95_ms"], o["cost_per_1k"]))
    if len(frontier) > 1:
        points = " ".join(f"{x(o['p95_ms'])},{y(o['cost_per_1k'])}" for o in frontier)
        out.append(f'<polyline class="frontier" points="{points}" fill="none" stroke="#222" stroke-width="1.5" />')
    for option in plotted:
        cx, cy = x(option["p95_ms"]), y(option["cost_per_1k"])
        name = escape(str(option["option"]))
        pareto = bool(option.get("pareto"))
        stroke = 'stroke="#111" stroke-width="3"' if pareto else 'stroke="#fff" stroke-width="1"'
        colour = quality_colour(option.get("quality"), q_lo, q_hi)
        out.append(
            f'<circle class="option{" pareto" if pareto else ""}" data-option="{name}" cx="{cx}" cy="{cy}" '
            f'r="{RADIUS}" fill="{colour}" {stroke}><title>{escape(_tooltip(option))}</title></circle>'
        )
        # Labels near the right edge go to the left of their point, so they stay inside.
        anchor, dx = ("end", -RADIUS - 5) if cx > right - 110 else ("start", RADIUS + 5)
        out.append(f'<text class="label" x="{cx + dx}" y="{cy - RADIUS - 2}" text-anchor="{anchor}">{name}</text>')
    out.extend(_legend(q_lo, q_hi, known=bool(qualities), frontier=bool(frontier)))
    return out


def _axes(x_axis: Axis, y_axis: Axis, x: Callable[[float], float], y: Callable[[float], float]) -> list[str]:
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM
    out = []
    for tick in x_axis.ticks:
        out.append(f'<line class="grid" x1="{x(tick)}" y1="{TOP}" x2="{x(tick)}" y2="{bottom}" />')
        out.append(
            f'<text class="tick" x="{x(tick)}" y="{bottom + 16}" text-anchor="middle">{x_axis.label(tick)}</text>'
        )
    for tick in y_axis.ticks:
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y(tick)}" x2="{right}" y2="{y(tick)}" />')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{y(tick) + 4}" text-anchor="end">{y_axis.label(tick)}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" />')
    out.append(f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" />')
    x_title = "p95 latency (ms" + (", log scale)" if x_axis.log else ")")
    y_title = "cost per 1,000 requests (USD" + (", log scale)" if y_axis.log else ")")
    middle_y = (TOP + bottom) / 2
    out.append(
        f'<text class="axis-title" x="{(LEFT + right) / 2}" y="{HEIGHT - 14}" text-anchor="middle">{x_title}</text>'
    )
    out.append(
        f'<text class="axis-title" x="16" y="{middle_y}" text-anchor="middle" '
        f'transform="rotate(-90 16 {middle_y})">{y_title}</text>'
    )
    return out


def _legend(q_lo: float, q_hi: float, *, known: bool, frontier: bool) -> list[str]:
    left = WIDTH - RIGHT + 24
    out = [
        f'<g class="legend" transform="translate({left} {TOP + 4})">',
        '<text x="0" y="0">quality</text>',
        '<defs><linearGradient id="pareto-quality" x1="0" y1="1" x2="0" y2="0">'
        f'<stop offset="0" stop-color="{quality_colour(0, 0, 1)}" />'
        f'<stop offset="1" stop-color="{quality_colour(1, 0, 1)}" /></linearGradient></defs>',
        '<rect x="0" y="10" width="14" height="80" fill="url(#pareto-quality)" />',
        f'<text x="20" y="20">{f"{q_hi:.3f}" if known else "high"}</text>',
        f'<text x="20" y="90">{f"{q_lo:.3f}" if known else "low"}</text>',
        f'<circle cx="7" cy="112" r="{RADIUS}" fill="{UNKNOWN_COLOUR}" />',
        '<text x="20" y="116">unknown</text>',
    ]
    if frontier:
        out.append(f'<circle cx="7" cy="138" r="{RADIUS}" fill="none" stroke="#111" stroke-width="3" />')
        out.append('<text x="20" y="142">Pareto-optimal</text>')
    out.append("</g>")
    return out
