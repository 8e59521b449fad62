"""Figures for `socketlab speed --plot`: throughput and probe latency (and UDP loss) against the swept size.

Imports matplotlib, and only with the Agg backend (a Figure with no pyplot, so no window and no global
state): import this module only when a plot is asked for.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from socketlab.tools.speed.model import PointResult, SpeedResult
from socketlab.units import format_size

MiB = 1024 * 1024
PER_CALL = "time per send() call (µs)"
# What the x axis can show, by the field of a Point that varies (both buffers at once: "buffer").
AXES = {
    "buffer": "SO_SNDBUF = SO_RCVBUF asked (bytes)",
    "sndbuf": "SO_SNDBUF asked (bytes)",
    "rcvbuf": "SO_RCVBUF asked (bytes)",
    "chunk": "bytes per send() and recv() call",
}


@dataclass
class PlotInfo:
    """What was drawn, for tests and for the CLI's message: panel title -> series labels."""

    path: Path
    x_axis: str
    panels: dict[str, list[str]] = field(default_factory=dict)
    figure: Any = None


def _values(points: Sequence[PointResult], name: str) -> list[int | None]:
    if name == "buffer":
        return [p.point.sndbuf for p in points]
    value: list[int | None] = [getattr(p.point, name) for p in points]
    return value


def choose_x_axis(points: Sequence[PointResult]) -> str:
    """The swept size: both buffers together, one of them, or the chunk (the first that varies)."""
    if all(p.point.sndbuf == p.point.rcvbuf for p in points) and len(set(_values(points, "buffer"))) > 1:
        return "buffer"
    for name in ("sndbuf", "rcvbuf", "chunk"):
        if len(set(_values(points, name))) > 1:
            return name
    return "chunk"


def _series_key(p: PointResult, x_axis: str) -> str:
    parts = []
    fields = {"buffer": ("chunk",), "sndbuf": ("rcvbuf", "chunk"), "rcvbuf": ("sndbuf", "chunk")}
    for name in fields.get(x_axis, ("sndbuf", "rcvbuf")):
        value = getattr(p.point, name)
        parts.append(f"{name}={'auto' if value is None else format_size(value)}")
    return ", ".join(parts)


def plot_speed(result: SpeedResult, path: str | Path) -> PlotInfo:
    """Draw the sweep to a PNG at `path`; log axes, median with min-max bars over the repeats."""
    points = [p for p in result.points if p.runs]
    x_axis = choose_x_axis(points)
    udp = result.config.proto == "udp"
    titles = ["throughput (MiB/s)", "probe latency (ms)"]
    if x_axis == "chunk":
        # What makes tiny chunks slow: each call costs about the same time, whatever it carries.
        titles.insert(1, PER_CALL)
    if udp:
        titles.append("datagrams lost (%)")
    fig = Figure(figsize=(8, 3.2 * len(titles)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(titles), 1, sharex=True, squeeze=False)[:, 0]
    info = PlotInfo(Path(path), x_axis, {t: [] for t in titles}, fig)

    groups: dict[str, list[PointResult]] = {}
    for p in points:
        groups.setdefault(_series_key(p, x_axis), []).append(p)
    for label, members in groups.items():
        sized = [(x, p) for p, x in zip(members, _values(members, x_axis), strict=True) if x is not None]
        auto = [p for p, x in zip(members, _values(members, x_axis), strict=True) if x is None]
        sized.sort(key=lambda item: item[0])
        for ax, title in zip(axes, titles, strict=True):
            xs, ys, lo, hi = _series(sized, title)
            if xs:
                line = ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
                info.panels[title].append(label)
                color = line[0].get_color()
            else:
                color = None
            for p in auto:
                y = _y(p, title)
                if y is not None:
                    ax.axhline(y[0], linestyle="--", color=color, label=f"{label} (auto: kernel autotuning)")
                    info.panels[title].append(f"{label} (auto)")

    limit = _kernel_limit(result, x_axis)
    for ax, title in zip(axes, titles, strict=True):
        ax.set_ylabel(title)
        ax.set_xscale("log", base=2)
        if not title.startswith("datagrams lost"):
            ax.set_yscale("log")
            low, high = ax.get_ylim()
            if low > 0 and high / low < 10:
                # At least a decade: autoscaling a flat curve would blow a 1% wobble up to full height.
                middle = math.sqrt(low * high)
                ax.set_ylim(middle / math.sqrt(10), middle * math.sqrt(10))
            # Plain numbers (300, not 3×10²): a log axis spanning less than a decade labels minor ticks.
            ax.yaxis.set_major_formatter(_plain)
            ax.yaxis.set_minor_formatter(_minor_labels(ax))
        else:
            ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        if limit is not None and limit[1] <= 2 * max(_all_x(points, x_axis), default=0):
            ax.axvline(limit[1], color="grey", linestyle=":", label=f"{limit[0]} = {format_size(limit[1])}")
        if info.panels[title]:
            ax.legend(fontsize="small")
    bottom = axes[-1]
    bottom.set_xlabel(AXES[x_axis])
    bottom.xaxis.set_major_locator(LogLocator(base=2))
    bottom.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_size(round(v)) if v >= 1 else ""))
    c = result.config
    where = f"to {c.to[0]}:{c.to[1]}" if c.to else f"loopback {c.host}"
    if c.netns is not None:
        where = f"netns link {c.netns.rate_bits / 1e6:g} Mbit/s"
        where += f", {c.netns.delay * 1e3:g} ms back" if c.netns.delay else ""
    extra = f", recv delay {c.recv_delay * 1e6:.0f} µs" if c.recv_delay else ""
    rate = f", {c.rate.per_second:g} {c.rate.unit}/s" if c.rate else ""
    fig.suptitle(
        f"socketlab speed: {c.proto} {where}, {c.duration:g} s x {c.repeat}{rate}{extra}", fontsize="medium"
    )
    fig.savefig(path, format="png", dpi=100)
    return info


@FuncFormatter
def _plain(value: float, _pos: int | None) -> str:
    return f"{value:g}"


def _minor_labels(ax: Any) -> FuncFormatter:
    """Label minor ticks only when the axis spans less than a decade (else it has major ones)."""

    def label(value: float, _pos: int | None) -> str:
        low, high = ax.get_ylim()
        return f"{value:g}" if low > 0 and high / low < 10.5 else ""

    return FuncFormatter(label)


def _y(p: PointResult, title: str) -> tuple[float, float, float] | None:
    """(median, min, max) of the panel's quantity for one point, or None where unknown."""
    if title.startswith("throughput"):
        t = p.throughput
        return None if t is None else (t["median"] / MiB, t["min"] / MiB, t["max"] / MiB)
    if title.startswith("probe"):
        lat = p.probe_latency
        # The bar spans the median to the 90th percentile: the spread of the probes, not of the runs.
        return None if lat is None else (lat["median"] * 1e3, lat["median"] * 1e3, lat["p90"] * 1e3)
    if title == PER_CALL:
        values = [1e6 * r.send_seconds / r.send_calls for r in p.runs if r.send_calls]
    else:
        values = [
            100 * r.udp.lost / r.udp.sent for r in p.runs if r.udp and r.udp.lost is not None and r.udp.sent
        ]
    if not values:
        return None
    values.sort()
    return statistics.median(values), values[0], values[-1]


def _all_x(points: Sequence[PointResult], x_axis: str) -> list[int]:
    return [x for x in _values(points, x_axis) if x is not None]


def _series(
    sized: list[tuple[int, PointResult]], title: str
) -> tuple[list[int], list[float], list[float], list[float]]:
    xs: list[int] = []
    ys: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    for x, p in sized:
        y = _y(p, title)
        if y is None:
            continue
        xs.append(x)
        ys.append(y[0])
        lo.append(y[0] - y[1])
        hi.append(y[2] - y[0])
    return xs, ys, lo, hi


def _kernel_limit(result: SpeedResult, x_axis: str) -> tuple[str, int] | None:
    """The sysctl that caps the swept buffer, to mark on the x axis: asks beyond it are clamped."""
    name = {"buffer": "net.core.rmem_max", "rcvbuf": "net.core.rmem_max", "sndbuf": "net.core.wmem_max"}.get(
        x_axis
    )
    if name is None or name not in result.kernel:
        return None
    return name, result.kernel[name][0]
