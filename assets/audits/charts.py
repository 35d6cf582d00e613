"""The audit report's three kinds of plot, written as SVG text.

The plots are simple: grouped vertical bars, lines through points, and grouped horizontal
bars around zero. Writing the SVG directly takes about a millisecond per plot. Matplotlib
took about 0.3 s per report and 0.25 s to import, in every audit step. The output is plain
text, so labels stay searchable, and the same figures give the same bytes.
"""

import html
import math
from collections.abc import Sequence

BEFORE, AFTER = "#9aa5b1", "#1f6feb"
PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#bf8700", "#8250df", "#57606a", "#0e8a9e", "#cf222e")
FONT = 11  # px; a character is about 0.6 FONT wide in the sans-serif fonts browsers pick
_CHAR = 0.6 * FONT


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 times a power of ten) covering
    [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9) * step
    ticks = []
    value = first
    while value < high + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:g}"


def _text(x: float, y: float, content: str, anchor: str = "middle", size: int = FONT, extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
            f"{html.escape(content)}</text>")


def _frame(width: float, height: float, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="system-ui,sans-serif" fill="#1f2328">'
            + "".join(body) + "</svg>")


def _legend(x: float, y: float, entries: Sequence[tuple[str, str]]) -> list[str]:
    parts = []
    for i, (name, colour) in enumerate(entries):
        top = y + i * (FONT + 4)
        parts.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="10" height="10" fill="{colour}"/>')
        parts.append(_text(x + 14, top + 9, name, "start"))
    return parts


def paired_bars(title: str, labels: Sequence[str], before: Sequence[float], after: Sequence[float]) -> str:
    """One pair of bars (before, after) per label, on a shared axis from zero."""
    width, plot_height = 620, 170
    ticks = nice_ticks(0.0, max([*before, *after, 0.0]))
    top_value = ticks[-1] or 1.0
    # Labels run down-left at 45 degrees from under their bars (0.71 = cos 45°): room below,
    # and on the left for the first label, which starts half a slot into the plot.
    left, top = 12 + _CHAR * max(len(_label(t)) for t in ticks), 28
    if labels:
        left = max(left, 0.71 * _CHAR * len(labels[0]) + 8 - 0.5 * (width - left - 130) / len(labels))
    plot_width = width - left - 130
    label_room = 16 + FONT + 0.71 * _CHAR * max([len(s) for s in labels] or [1])
    body = [_text(width / 2, 16, title, size=FONT + 2)]
    for tick in ticks:
        y = top + plot_height * (1 - tick / top_value)
        body.append(f'<line x1="{left:.1f}" x2="{left + plot_width:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                    'stroke="#d0d7de" stroke-width="0.5"/>')
        body.append(_text(left - 4, y + 4, _label(tick), "end"))
    slot = plot_width / max(len(labels), 1)
    for i, label in enumerate(labels):
        for offset, value, colour in ((0.1, before[i], BEFORE), (0.5, after[i], AFTER)):
            bar = plot_height * max(value, 0.0) / top_value
            body.append(f'<rect x="{left + slot * (i + offset):.1f}" y="{top + plot_height - bar:.1f}" '
                        f'width="{slot * 0.4:.1f}" height="{bar:.1f}" fill="{colour}"/>')
        x, y = left + slot * (i + 0.5), top + plot_height + 12
        body.append(_text(x, y, label, "end", extra=f' transform="rotate(-45 {x:.1f} {y:.1f})"'))
    body.append(f'<line x1="{left:.1f}" x2="{left + plot_width:.1f}" y1="{top + plot_height:.1f}" '
                f'y2="{top + plot_height:.1f}" stroke="#1f2328"/>')
    body += _legend(left + plot_width + 12, top, [("before (pool)", BEFORE), ("after (subset)", AFTER)])
    return _frame(width, top + plot_height + label_room, body)


def lines(title: str, x: Sequence[float], series: dict[str, Sequence[float]], x_label: str) -> str:
    """One line with markers per series, over shared x values."""
    width, plot_height = 420, 170
    values = [v for ys in series.values() for v in ys]
    y_ticks = nice_ticks(min(values, default=0.0), max(values, default=1.0))
    x_ticks = nice_ticks(min(x, default=0.0), max(x, default=1.0))
    left, top = 12 + _CHAR * max(len(_label(t)) for t in y_ticks), 28
    plot_width = width - left - 90

    def px(value: float) -> float:
        return left + plot_width * (value - x_ticks[0]) / ((x_ticks[-1] - x_ticks[0]) or 1.0)

    def py(value: float) -> float:
        return top + plot_height * (1 - (value - y_ticks[0]) / ((y_ticks[-1] - y_ticks[0]) or 1.0))

    body = [_text(width / 2, 16, title, size=FONT + 2)]
    for tick in y_ticks:
        body.append(f'<line x1="{left:.1f}" x2="{left + plot_width:.1f}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" '
                    'stroke="#d0d7de" stroke-width="0.5"/>')
        body.append(_text(left - 4, py(tick) + 4, _label(tick), "end"))
    for tick in x_ticks:
        body.append(_text(px(tick), top + plot_height + 14, _label(tick)))
    body.append(_text(left + plot_width / 2, top + plot_height + 30, x_label))
    colours = {"before": BEFORE, "after": AFTER}
    legend = []
    for i, (name, ys) in enumerate(series.items()):
        colour = colours.get(name, PALETTE[i % len(PALETTE)])
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, ys))
        body.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        body += [f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="{colour}"/>' for a, b in zip(x, ys)]
        legend.append((name, colour))
    body.append(f'<line x1="{left:.1f}" x2="{left + plot_width:.1f}" y1="{top + plot_height:.1f}" '
                f'y2="{top + plot_height:.1f}" stroke="#1f2328"/>')
    body += _legend(left + plot_width + 12, top, legend)
    return _frame(width, top + plot_height + 40, body)


def horizontal_bars(labels: Sequence[str], series: dict[str, Sequence[float]], x_label: str) -> str:
    """Per label, one horizontal bar per series, from a zero line (values may be negative)."""
    width, row = 680, 8 + 7 * max(len(series), 1)
    values = [v for vs in series.values() for v in vs]
    ticks = nice_ticks(min([*values, 0.0]), max([*values, 0.0]))
    left, top = 12 + _CHAR * max([len(s) for s in labels] or [1]), 8
    plot_width, plot_height = width - left - 110, row * len(labels)

    def px(value: float) -> float:
        return left + plot_width * (value - ticks[0]) / ((ticks[-1] - ticks[0]) or 1.0)

    body = []
    for tick in ticks:
        body.append(f'<line x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{top:.1f}" y2="{top + plot_height:.1f}" '
                    'stroke="#d0d7de" stroke-width="0.5"/>')
        body.append(_text(px(tick), top + plot_height + 14, _label(tick)))
    bar = (row - 8) / max(len(series), 1)
    legend = []
    for j, (name, vs) in enumerate(series.items()):
        colour = PALETTE[j % len(PALETTE)]
        legend.append((name, colour))
        for i, value in enumerate(vs):
            x0, x1 = sorted((px(0.0), px(value)))
            body.append(f'<rect x="{x0:.1f}" y="{top + i * row + 4 + j * bar:.1f}" width="{x1 - x0:.1f}" '
                        f'height="{bar:.1f}" fill="{colour}"/>')
    for i, label in enumerate(labels):
        body.append(_text(left - 6, top + i * row + row / 2 + 4, label, "end"))
    body.append(f'<line x1="{px(0.0):.1f}" x2="{px(0.0):.1f}" y1="{top:.1f}" y2="{top + plot_height:.1f}" '
                'stroke="#1f2328"/>')
    body.append(_text(left + plot_width / 2, top + plot_height + 30, x_label))
    body += _legend(left + plot_width + 12, top, legend)
    return _frame(width, top + plot_height + 40, body)
