"""`socketlab bench compare`: the same load against several servers on this machine, side by side.

Each server is started in turn on 127.0.0.1 (its own free port), loaded, and stopped; the order of
servers is the same in every round, and each figure is also given as a ratio to the C reference server
(`cserver` of ../shared/bench) measured in the same round, because on shared machines absolute figures
drift by ±25% between runs while ratios measured minutes apart hold. Results are medians over rounds.

The load generator is the C `loadgen` when it can be built (the instrument the issue's targets are
checked with), else `socketlab bench`. Server and generator are pinned to different cores with
`taskset` when the machine has two and taskset is installed.

This module starts and stops processes and measures; it never prints (progress goes to `log`), and
rendering the report (Markdown, chart) is pure formatting of the measurement records.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from socketlab.errors import ConfigError, SocketlabError
from socketlab.i18n import _
from socketlab.tools.bench import machine_info

Log = Callable[[str], None]

SCENARIOS = ("tcp16", "tcp256", "udp16", "bulk", "idle", "startup")
REFERENCE = "cserver"
# The server the targets are about: socketlab's default server, one worker.
TARGET_SERVER = "socketlab"
REPO_ROOT = Path(__file__).resolve().parents[3]
BEGIN_MARK = "<!-- socketlab bench compare: begin (generated; edit outside these markers) -->"
END_MARK = "<!-- socketlab bench compare: end -->"
LISTENING = re.compile(r"^(tcp|udp) (\S+) listening on \[?([^\]]+?)\]?:(\d+)\s*$", re.MULTILINE)
_START_TIMEOUT = 20.0  # seconds for a server to say it listens (a cold Python start on a busy box)
_STOP_TIMEOUT = 5.0  # seconds after SIGINT before SIGKILL
LINE_SIZE = 64  # bytes per request line, newline included (the "64-byte lines")
BULK_LINE = 1024
BULK_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    unit: str
    higher_is_better: bool
    target: str  # the target, in words
    target_ratio: float | None = None  # to cserver, for throughput scenarios
    target_limit: float | None = None  # an absolute bound, for memory and start-up


SCENARIO_INFO: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("tcp16", "TCP upper, 64-byte lines, 16 connections", "req/s", True, "≥ 0.85× cserver", 0.85),
        Scenario(
            "tcp256", "TCP upper, 64-byte lines, 256 connections", "req/s", True, "≥ 0.85× cserver", 0.85
        ),
        Scenario("udp16", "UDP upper, 64-byte datagrams, 16 sockets", "req/s", True, "≥ 0.70× cserver", 0.70),
        Scenario(
            "bulk", "Bulk round trip, 1 KiB lines, one connection", "MB/s", True, "≥ 0.75× cserver", 0.75
        ),
        Scenario(
            "idle",
            "Idle TCP connections: server memory per connection",
            "KiB/conn",
            False,
            "≤ 4 KiB per connection",
            target_limit=4.0,
        ),
        Scenario(
            "startup",
            "`socketlab client tcp ... --message x`, start to exit",
            "ms",
            False,
            "< 120 ms",
            target_limit=120.0,
        ),
    )
}


@dataclass(frozen=True)
class ServerDef:
    """How to start one server. `argv(proto, port)`; port 0 where the server announces its port."""

    name: str
    label: str
    argv: Callable[[str, int], list[str]]
    protos: tuple[str, ...]
    announces: bool = True  # prints "tcp upper listening on HOST:PORT"; else "ready" on a given port
    idle_ok: bool = True  # can hold thousands of idle connections (not one thread or one client each)
    # Extra arguments for the idle-memory run, given the number of connections (a connection cap to lift).
    idle_args: Callable[[int], list[str]] | None = None


@dataclass(frozen=True)
class CompareOptions:
    rounds: int = 3
    duration: float = 5.0
    warmup: float = 1.0
    scenarios: tuple[str, ...] = SCENARIOS
    servers: tuple[str, ...] | None = None  # None: every server that can run here
    bulk_total: int = 1024**3
    idle_conns: int = 10_000
    startup_runs: int = 10
    generator: str = "auto"  # "auto", "loadgen" or "socketlab"
    cbench: str | None = None
    pin: bool = True
    command: str = "socketlab bench compare"


@dataclass(frozen=True)
class Measurement:
    scenario: str
    server: str
    round: int
    value: float  # in the scenario's unit
    p50_us: float | None = None
    p99_us: float | None = None
    errors: int = 0
    note: str = ""


@dataclass
class CompareReport:
    options: CompareOptions
    machine: dict[str, Any]
    date: str
    generator: str
    pinned: bool
    labels: dict[str, str] = field(default_factory=dict)  # server name -> label, in run order
    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    extras: dict[str, float] = field(default_factory=dict)  # e.g. interpreter start-up floor
    revision: str = ""  # the socketlab commit measured, when it runs from a git checkout
    hot_paths: str = ""  # which copies of its hot paths socketlab ran (see transports/compiled.py)

    def to_json(self) -> dict[str, Any]:
        return {
            "options": asdict(self.options),
            "machine": self.machine,
            "date": self.date,
            "generator": self.generator,
            "pinned": self.pinned,
            "labels": self.labels,
            "measurements": [asdict(m) for m in self.measurements],
            "skipped": self.skipped,
            "extras": self.extras,
            "revision": self.revision,
            "hot_paths": self.hot_paths,
        }


def parse_list(text: str, allowed: Sequence[str]) -> tuple[str, ...]:
    if text == "all":
        return tuple(allowed)
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in items if x not in allowed]
    if unknown:
        raise ConfigError(
            _("unknown {unknown}: choose from {allowed}").format(
                unknown=", ".join(unknown), allowed=", ".join(allowed)
            )
        )
    return items


# --- summaries (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    server: str
    label: str
    value: float  # median over rounds
    ratio: float | None  # median over rounds of value / cserver's value in the same round
    p50_us: float | None
    p99_us: float | None
    errors: int
    rounds: int
    spread: tuple[float, float]  # lowest and highest value over rounds
    note: str


def summarize(report: CompareReport, scenario: str) -> list[Row]:
    """One row per server for `scenario`, in run order."""
    ms = [m for m in report.measurements if m.scenario == scenario]
    reference = {m.round: m.value for m in ms if m.server == REFERENCE and m.value > 0}
    rows = []
    order = list(report.labels) + sorted({m.server for m in ms} - set(report.labels))
    for server in order:
        mine = [m for m in ms if m.server == server]
        if not mine:
            continue
        values = [m.value for m in mine]
        ratios = [m.value / reference[m.round] for m in mine if m.round in reference]
        p50 = [m.p50_us for m in mine if m.p50_us is not None]
        p99 = [m.p99_us for m in mine if m.p99_us is not None]
        notes = sorted({m.note for m in mine if m.note})
        rows.append(
            Row(
                server=server,
                label=report.labels.get(server, server),
                value=statistics.median(values),
                ratio=statistics.median(ratios) if ratios and SCENARIO_INFO[scenario].target_ratio else None,
                p50_us=statistics.median(p50) if p50 else None,
                p99_us=statistics.median(p99) if p99 else None,
                errors=sum(m.errors for m in mine),
                rounds=len(mine),
                spread=(min(values), max(values)),
                note="; ".join(notes),
            )
        )
    return rows


@dataclass(frozen=True)
class TargetCheck:
    scenario: str
    target: str
    measured: str
    met: bool | None  # None: not measured


def check_targets(report: CompareReport) -> list[TargetCheck]:
    checks = []
    for name in report.options.scenarios:
        info = SCENARIO_INFO[name]
        who = "socketlab client" if name == "startup" else TARGET_SERVER
        row = next((r for r in summarize(report, name) if r.server == who), None)
        if row is None:
            checks.append(TargetCheck(name, info.target, "not measured", None))
        elif info.target_ratio is not None:
            if row.ratio is None:
                checks.append(TargetCheck(name, info.target, "no cserver figure to compare", None))
            else:
                met = row.ratio >= info.target_ratio and row.errors == 0
                # Three decimals: 0.849 must not read as a "0.85" that failed a 0.85 target.
                checks.append(TargetCheck(name, info.target, f"{row.ratio:.3f}×", met))
        else:
            assert info.target_limit is not None
            met = row.value <= info.target_limit if name == "idle" else row.value < info.target_limit
            checks.append(TargetCheck(name, info.target, f"{_num(row.value)} {info.unit}", met))
    return checks


def _num(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _opt(value: float | None, fmt: Callable[[float], str] = _num) -> str:
    return "–" if value is None else fmt(value)


def render_table(report: CompareReport) -> str:
    """The per-scenario tables, in Markdown (also what the command prints)."""
    out: list[str] = []
    for name in report.options.scenarios:
        info = SCENARIO_INFO[name]
        rows = summarize(report, name)
        out.append(f"### {info.title} ({info.unit})")
        out.append("")
        if not rows:
            out.append("Not measured (see Skipped).")
            out.append("")
            continue
        throughput = info.target_ratio is not None
        if throughput:
            out.append(f"| server | {info.unit} | × cserver | p50 µs | p99 µs | errors | range over rounds |")
            out.append("|---|---:|---:|---:|---:|---:|---|")
        else:
            out.append(f"| server | {info.unit} | range over rounds | notes |")
            out.append("|---|---:|---|---|")
        for r in rows:
            spread = f"{_num(r.spread[0])}–{_num(r.spread[1])} ({r.rounds})"
            if throughput:
                ratio = _opt(r.ratio, lambda x: f"{x:.2f}")
                errors = str(r.errors) if not r.note else f"{r.errors} ({r.note})"
                out.append(
                    f"| {r.label} | {_num(r.value)} | {ratio} | {_opt(r.p50_us)} | {_opt(r.p99_us)} "
                    f"| {errors} | {spread} |"
                )
            else:
                out.append(f"| {r.label} | {_num(r.value)} | {spread} | {r.note} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_markdown(report: CompareReport, chart: str | None = None) -> str:
    """The generated section of docs/performance.md, markers included."""
    o = report.options
    m = report.machine
    gen = {
        "loadgen": "the C `loadgen` of ../shared/bench",
        "socketlab": "`socketlab bench` (the C loadgen could not be built)",
    }.get(report.generator, report.generator)
    pin = (
        "server pinned to CPU 0 and load generator to CPU 1 (`taskset`)"
        if report.pinned
        else "not pinned to cores (no taskset, or a single usable core)"
    )
    lines = [
        BEGIN_MARK,
        "",
        f"## Latest comparison ({report.date})",
        "",
        f"- Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('system')} {m.get('kernel')}, "
        f"{m.get('python')}.",
        *([f"- socketlab: {report.revision}."] if report.revision else []),
        *([f"- socketlab's hot paths: {report.hot_paths}."] if report.hot_paths else []),
        f"- Load generator: {gen}; {pin}.",
        f"- Medians of {o.rounds} round(s); each load run {o.duration:g} s measured after {o.warmup:g} s "
        "warm-up. Ratios are to `cserver` measured in the same round, then the median of those ratios.",
        f"- Bulk: {o.bulk_total / 2**20:,.0f} MiB of {BULK_LINE}-byte lines in {BULK_CHUNK // 1024} KiB "
        f"writes through one connection and back (`bulk rt`). Idle memory: {o.idle_conns:,} connections. "
        f"Start-up: median of {o.startup_runs} runs.",
        "",
        "Reproduce from the repository root (the C programs of ../shared/bench are compiled with gcc "
        "into a temporary directory):",
        "",
        "```",
        o.command,
        "```",
        "",
        "### Targets of issue 4 (socketlab's default server, one worker)",
        "",
        "| scenario | target | measured | met |",
        "|---|---|---|---|",
    ]
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    for c in check_targets(report):
        lines.append(f"| {SCENARIO_INFO[c.scenario].title} | {c.target} | {c.measured} | {verdict[c.met]} |")
    lines.append("")
    if chart:
        lines += [f"![ratios to cserver]({chart})", ""]
    lines.append(render_table(report))
    if report.extras:
        lines.append("Other figures:")
        lines.append("")
        for key, value in report.extras.items():
            lines.append(f"- {key}: {_num(value)}")
        lines.append("")
    if report.skipped:
        lines.append("### Skipped")
        lines.append("")
        for what, why in report.skipped:
            lines.append(f"- {what}: {why}")
        lines.append("")
    lines.append(END_MARK)
    return "\n".join(lines) + "\n"


_DOC_HEAD = """# Performance

How fast socketlab serves the lecture's protocols, measured with the project's own tools against the
C reference server of `../shared/bench` on the same machine. The section between the markers below is
written by `socketlab bench compare`; notes outside it are kept when it runs again.

"""


def write_markdown(report: CompareReport, path: str, chart: str | None) -> None:
    """Write the generated section into `path`, keeping whatever is outside the markers."""
    target = Path(path)
    rel_chart = os.path.relpath(chart, target.parent) if chart else None
    section = render_markdown(report, rel_chart)
    old = target.read_text(encoding="utf-8") if target.exists() else ""
    if BEGIN_MARK in old and END_MARK in old:
        head, _, rest = old.partition(BEGIN_MARK)
        _, _, tail = rest.partition(END_MARK)
        text = head + section.rstrip("\n") + tail
    else:
        text = (old.rstrip("\n") + "\n\n" if old else _DOC_HEAD) + section
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")


def write_chart(report: CompareReport, path: str) -> bool:
    """A grouped bar chart of ratios to cserver per throughput scenario; False when nothing to plot."""
    scenarios = [s for s in report.options.scenarios if SCENARIO_INFO[s].target_ratio is not None]
    table = {s: {r.server: r.ratio for r in summarize(report, s) if r.ratio is not None} for s in scenarios}
    scenarios = [s for s in scenarios if table[s]]
    servers = [name for name in report.labels if any(name in table[s] for s in scenarios)]
    if not scenarios or not servers:
        return False
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(
        figsize=(max(7.0, 1.9 * len(scenarios) + 2), 4.6 + 0.25 * len(servers) / 3), dpi=110
    )
    width = 0.8 / len(servers)
    for i, server in enumerate(servers):
        xs = [j + (i - (len(servers) - 1) / 2) * width for j, s in enumerate(scenarios) if server in table[s]]
        ys = [table[s][server] for s in scenarios if server in table[s]]
        # tab20's dark shades first, then its light ones: more than ten servers never share a colour.
        color = plt.get_cmap("tab20")((2 * i) % 20 + (i // 10) % 2)
        ax.bar(xs, ys, width * 0.95, label=report.labels[server], color=color)
    for j, s in enumerate(scenarios):
        goal = SCENARIO_INFO[s].target_ratio
        if goal is not None:
            label = "issue 4 target" if j == 0 else "_nolegend_"
            ax.hlines(goal, j - 0.45, j + 0.45, colors="black", linestyles="dashed", label=label)
    ax.set_xticks(range(len(scenarios)), [SCENARIO_INFO[s].name for s in scenarios])
    ax.set_ylabel("ratio to cserver (same round, median)")
    ax.set_title(f"socketlab bench compare, {report.date}")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    # Below the axes: inside, the legend would hide bars.
    ax.legend(fontsize="small", ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    ax.set_ylim(0, max(1.25, max(max(v.values()) for v in table.values()) * 1.1))
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


# --- the instruments ---------------------------------------------------------------------------


def find_cbench(explicit: str | None) -> Path | None:
    candidates: list[str | None] = [explicit, os.environ.get("SOCKETLAB_CBENCH")]
    for base in (Path.cwd(), REPO_ROOT):
        candidates += [str(base.parent / "shared" / "bench"), str(base / "shared" / "bench")]
    for c in candidates:
        if c and (Path(c) / "cserver.c").is_file():
            return Path(c)
    return None


def build_cbench(source: Path, into: Path, log: Log) -> dict[str, Path]:
    """Compile cserver, loadgen and bulk with the Makefile's flags; {} when there is no compiler."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return {}
    built = {}
    for prog in ("cserver", "loadgen", "bulk"):
        out = into / prog
        result = subprocess.run(
            [cc, "-O2", "-Wall", "-Wextra", "-o", str(out), str(source / f"{prog}.c"), "-lpthread"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0:
            built[prog] = out
        else:
            log(f"could not build {prog}: {result.stderr.strip()[:300]}")
    return built


def _socketlab_cmd() -> list[str]:
    return [sys.executable, "-m", "socketlab"]


def serve_capabilities() -> tuple[str | None, set[str]]:
    """Whether `socketlab serve` exists here (None) or why not, and which options its --help lists.

    The choices of --model come back as "model:NAME".
    """
    try:
        result = subprocess.run(
            [*_socketlab_cmd(), "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            env=_english_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "`socketlab serve --help` did not finish", set()
    if result.returncode != 0:
        return "this socketlab has no `serve` command yet", set()
    words = set(re.findall(r"--[a-z][a-z-]*", result.stdout))
    choices = re.search(r"--model \{([^}]*)\}", result.stdout)
    if choices:
        words |= {f"model:{name.strip()}" for name in choices[1].split(",")}
    return None, words


def client_available() -> bool:
    result = subprocess.run(
        [*_socketlab_cmd(), "client", "--help"],
        capture_output=True,
        timeout=30,
        env=_english_env(),
        check=False,
    )
    return result.returncode == 0


def _english_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1"})
    env.pop("LANGUAGE", None)
    return env


def server_defs(
    cbin: dict[str, Path], baselines: Path | None, log: Log
) -> tuple[list[ServerDef], list[tuple[str, str]]]:
    """Every server this machine can run, in run order, and what was left out with the reason."""
    defs: list[ServerDef] = []
    skipped: list[tuple[str, str]] = []
    if "cserver" in cbin:
        exe = str(cbin["cserver"])
        defs.append(
            ServerDef(
                REFERENCE,
                "C cserver (epoll, reference)",
                lambda proto, port: [exe, str(port), "upper", *(["udp"] if proto == "udp" else [])],
                ("tcp", "udp"),
                announces=False,
            )
        )
    else:
        skipped.append(("C cserver", "could not be built (no gcc or no ../shared/bench); no ratios"))

    why, words = serve_capabilities()
    if why is not None:
        skipped.append(("socketlab serve (all variants)", why))
    else:

        def serve(*extra: str) -> Callable[[str, int], list[str]]:
            def argv(proto: str, port: int) -> list[str]:
                return [
                    *_socketlab_cmd(),
                    "serve",
                    proto,
                    "--service",
                    "upper",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    *extra,
                ]

            return argv

        has_loop = "--loop" in words
        # The idle scenario needs more clients at once than a default cap may allow: lift it for that run.
        lift: Callable[[int], list[str]] | None = (
            (lambda n: ["--max-connections", str(n + 100)]) if "--max-connections" in words else None
        )
        models = {w.partition(":")[2] for w in words if w.startswith("model:")}
        defs.append(
            ServerDef(
                TARGET_SERVER,
                "socketlab (uvloop)" if has_loop else "socketlab (default)",
                serve("--loop", "uvloop") if has_loop else serve(),
                ("tcp", "udp"),
                idle_args=lift,
            )
        )
        if has_loop:
            defs.append(
                ServerDef(
                    "socketlab-asyncio",
                    "socketlab (asyncio loop)",
                    serve("--loop", "asyncio"),
                    ("tcp", "udp"),
                    idle_args=lift,
                )
            )
        else:
            skipped.append(("socketlab --loop asyncio", "`socketlab serve` does not accept --loop"))
        if "--workers" in words:
            defs.append(
                ServerDef(
                    "socketlab-workers2",
                    "socketlab --workers 2",
                    serve("--workers", "2"),
                    ("tcp", "udp"),
                    idle_args=lift,
                )
            )
        else:
            skipped.append(("socketlab --workers 2", "`socketlab serve` does not accept --workers (yet)"))
        # (model, can hold thousands of idle connections): one client at a time or one thread each cannot.
        for model, idle_ok in (("iterative", False), ("threads", False), ("selectors", True)):
            label = f"socketlab --model {model}"
            if model in models:
                defs.append(
                    ServerDef(
                        f"socketlab-{model}",
                        label,
                        serve("--model", model),
                        ("tcp",),
                        idle_ok=idle_ok,
                        idle_args=lift,
                    )
                )
            elif model != "selectors":  # the issue names the other two; selectors is a bonus when present
                skipped.append((label, "`socketlab serve` does not accept it (yet)"))

    if baselines is not None and baselines.is_dir():

        def script(name: str, both: bool = False) -> Callable[[str, int], list[str]]:
            # Scripts that serve both protocols take --udp; the others serve one only.
            path = str(baselines / name)
            return lambda proto, port: [
                sys.executable,
                path,
                "--port",
                str(port),
                *(["--udp"] if both and proto == "udp" else []),
            ]

        defs.append(
            ServerDef(
                "uvloop-minimal",
                "minimal uvloop Protocol (no limits)",
                script("uvloop_server.py", both=True),
                ("tcp", "udp"),
            )
        )
        defs.append(
            ServerDef(
                "asyncio-streams", "plain asyncio streams", script("asyncio_streams_server.py"), ("tcp",)
            )
        )
        defs.append(
            ServerDef(
                "threading",
                "socketserver.ThreadingTCPServer",
                script("threading_server.py"),
                ("tcp",),
                idle_ok=False,
            )
        )
        defs.append(
            ServerDef(
                "udp-blocking", "blocking recvfrom/sendto loop", script("udp_blocking_server.py"), ("udp",)
            )
        )
    else:
        skipped.append(("baseline servers", "benchmarks/ not found next to the package"))
    return defs, skipped


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    port: int
    logfile: Any

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self.logfile.flush()
        self.logfile.seek(0)
        text: str = self.logfile.read().decode(errors="replace")
        return text


def _free_port(proto: str) -> int:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        # cserver takes a fixed port: ask the kernel for a free one and hand it over (a small race,
        # acceptable for a benchmark; tests never do this).
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def running(
    defn: ServerDef, proto: str, pin: list[str], extra: Sequence[str] = ()
) -> Iterator[RunningServer]:
    """Start a server, wait until it listens, yield it; stop it (SIGINT, then SIGKILL) afterwards."""
    port = 0 if defn.announces else _free_port(proto)
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below, once the server is gone
    proc = subprocess.Popen(
        [*pin, *defn.argv(proto, port), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=_english_env(),
        # Own process group: Ctrl-C in the terminal reaches us, and we stop the server ourselves.
        start_new_session=True,
    )
    server = RunningServer(proc, port, log)
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            text = server.output()
            if defn.announces:
                m = next((m for m in LISTENING.finditer(text) if m[1] == proto), None)
                if m:
                    server.port = int(m[4])
                    break
            elif "ready" in text:
                break
            if not server.alive() or time.monotonic() > deadline:
                raise SocketlabError(
                    _("{name} did not start: {output!r}").format(name=defn.name, output=text.strip()[-300:])
                )
            time.sleep(0.02)
        yield server
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants, from /proc (only `pid` where there is no /proc)."""
    pids = [pid]
    for p in pids:
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids += [int(x) for x in children.read_text().split()]
    return pids


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants, KiB (VmRSS from /proc)."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def tree_fds(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


# --- one measurement each ----------------------------------------------------------------------


class Runner:
    """Holds the instruments and runs single measurements against a running server."""

    def __init__(self, options: CompareOptions, cbin: dict[str, Path], pin: bool, log: Log) -> None:
        self.o = options
        self.cbin = cbin
        self.log = log
        self.pin_server = ["taskset", "-c", "0"] if pin else []
        self.pin_client = ["taskset", "-c", "1"] if pin else []
        use_loadgen = options.generator != "socketlab" and "loadgen" in cbin
        if options.generator == "loadgen" and "loadgen" not in cbin:
            raise ConfigError(_("the C loadgen could not be built (gcc and ../shared/bench are needed)"))
        self.generator = "loadgen" if use_loadgen else "socketlab"

    def _run_json(self, argv: list[str], timeout: float) -> dict[str, Any]:
        result = subprocess.run(
            [*self.pin_client, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_english_env(),
            check=False,
        )
        line = result.stdout.strip().splitlines()[-1:] if result.stdout.strip() else []
        if not line:
            raise SocketlabError(
                _("{program} printed nothing: {output}").format(
                    program=Path(argv[0]).name, output=result.stderr.strip()[-300:]
                )
            )
        data: dict[str, Any] = json.loads(line[0])
        return data

    def load(self, scenario: str, server: str, rnd: int, port: int) -> Measurement:
        proto = "udp" if scenario.startswith("udp") else "tcp"
        conns = 256 if scenario == "tcp256" else 16
        o = self.o
        timeout = o.warmup + o.duration + 60
        if self.generator == "loadgen":
            argv = [str(self.cbin["loadgen"]), "-p", str(port), "-c", str(conns), "-s", str(LINE_SIZE)]
            argv += [
                "-d",
                str(o.duration),
                "-w",
                str(o.warmup),
                "-m",
                "upper",
                *(["-u"] if proto == "udp" else []),
            ]
            d = self._run_json(argv, timeout)
            note = ""
            if d.get("connected", conns) < conns:
                note = f"{d['connected']}/{conns} connected"
            elif d.get("active_conns", conns) < conns:
                note = f"{d['active_conns']}/{conns} connections answered"
            return Measurement(
                scenario,
                server,
                rnd,
                float(d["rps"]),
                _latency(d.get("p50_us")),
                _latency(d.get("p99_us")),
                int(d["errors"]),
                note,
            )
        argv = [
            *_socketlab_cmd(),
            "bench",
            proto,
            "127.0.0.1",
            str(port),
            "-c",
            str(conns),
            "-s",
            str(LINE_SIZE),
        ]
        argv += ["-d", str(o.duration), "-w", str(o.warmup), "--json"]
        d = self._run_json(argv, timeout)
        lat = d.get("latency_us", {})
        note = f"{d['connected']}/{conns} connected" if d.get("connected", conns) < conns else ""
        return Measurement(
            scenario,
            server,
            rnd,
            float(d["rps"]),
            _latency(lat.get("p50")),
            _latency(lat.get("p99")),
            int(d["errors"]),
            note,
        )

    def bulk(self, server: str, rnd: int, port: int) -> Measurement:
        cap = max(10.0, 3 * self.o.duration)
        argv = [
            str(self.cbin["bulk"]),
            "rt",
            str(port),
            str(self.o.bulk_total),
            str(BULK_CHUNK),
            str(BULK_LINE),
        ]
        d = self._run_json([*argv, f"{cap:g}"], cap + 30)
        note = "stopped at the time cap" if d.get("capped") else ""
        if d.get("bytes_back", 0) < self.o.bulk_total and not d.get("capped"):
            note = f"only {d.get('bytes_back', 0):,} bytes came back"
        return Measurement(
            "bulk", server, rnd, float(d["MBps_back"]), errors=int(d.get("bad_bytes", 0)), note=note
        )

    def idle(self, server: str, rnd: int, srv: RunningServer) -> Measurement:
        n = self.o.idle_conns
        pid = srv.proc.pid
        _warm_up(srv.port)
        time.sleep(0.3)
        base_rss, base_fds = tree_rss_kib(pid), tree_fds(pid)
        socks: list[socket.socket] = []
        note = ""
        try:
            for _turn in range(n):
                socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
        except OSError as exc:
            note = f"{len(socks):,} connected, then {exc.strerror or exc}"
        try:
            held = _wait_steady(lambda: tree_fds(pid) - base_fds, len(socks))
            time.sleep(0.5)  # let lazily allocated per-connection state settle
            grown = tree_rss_kib(pid) - base_rss
        finally:
            for s in socks:
                s.close()
        if held < n and not note:
            note = f"server holds {held:,} of {n:,}"
        # Per connection the server really holds: a server that refused some must not look leaner.
        return Measurement("idle", server, rnd, grown / max(1, held), note=note)

    def startup(self, rnd: int, port: int) -> Measurement:
        exe = Path(sys.executable).with_name("socketlab")
        cmd = [str(exe)] if exe.exists() else _socketlab_cmd()
        times = []
        errors = 0
        for _turn in range(self.o.startup_runs):
            t = time.perf_counter()
            r = subprocess.run(
                [*self.pin_client, *cmd, "client", "tcp", "127.0.0.1", str(port), "--message", "x"],
                capture_output=True,
                timeout=30,
                env=_english_env(),
                check=False,
            )
            times.append((time.perf_counter() - t) * 1000)
            errors += r.returncode != 0 or b"X" not in r.stdout
        return Measurement("startup", "socketlab client", rnd, statistics.median(times), errors=errors)

    def interpreter_floor(self) -> float:
        times = []
        for _turn in range(self.o.startup_runs):
            t = time.perf_counter()
            subprocess.run([*self.pin_client, sys.executable, "-c", "pass"], check=False, timeout=30)
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times)


def _wait_steady(count: Callable[[], int], goal: int, timeout: float = 20.0) -> int:
    """Poll `count` until it reaches `goal`, stops moving for a second, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while last < goal and time.monotonic() < deadline and time.monotonic() - since < 1.0:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
    return max(0, last)


def _latency(value: Any) -> float | None:
    # loadgen prints -1 for a percentile of no samples at all.
    return float(value) if isinstance(value, int | float) and value >= 0 else None


def _warm_up(port: int) -> None:
    # One round trip first, so code that runs on the first connection is not counted per connection.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"warm up\n")
        s.settimeout(5)
        with contextlib.suppress(OSError):
            s.recv(100)


def _raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by the servers); return the usable connections."""
    try:
        import resource  # noqa: PLC0415 - Unix only

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        goal = wanted + 1000 if hard == resource.RLIM_INFINITY else min(hard, wanted + 1000)
        if goal > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (goal, hard))
        return max(0, min(wanted, goal - 1000))
    except (ImportError, ValueError, OSError):
        return wanted


def hot_paths_in_use() -> str:
    """Which copies of socketlab's hot paths the servers started here run (they use this same install)."""
    from socketlab.transports.tcp_server import CHUNK_PATH  # noqa: PLC0415 - only compare needs them
    from socketlab.transports.udp_server import DATAGRAM_PATH  # noqa: PLC0415

    return f"TCP per chunk {CHUNK_PATH}, UDP per datagram {DATAGRAM_PATH}"


def git_revision() -> str:
    """The commit of the code being measured, and whether src/ differs from it; "" outside git."""
    git = shutil.which("git")
    if git is None:
        return ""
    try:
        head = subprocess.run(
            [git, "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"commit {head}" + (" with uncommitted changes in src/" if dirty else "")


def can_pin() -> bool:
    if shutil.which("taskset") is None:
        return False
    try:
        return {0, 1} <= os.sched_getaffinity(0)
    except AttributeError:  # no affinity API on this system
        return False


# --- the whole comparison ----------------------------------------------------------------------


def run_compare(options: CompareOptions, log: Log) -> CompareReport:
    pinned = options.pin and can_pin()
    with tempfile.TemporaryDirectory(prefix="socketlab-bench-") as tmp:
        source = find_cbench(options.cbench)
        cbin = build_cbench(source, Path(tmp), log) if source else {}
        defs, skipped = server_defs(cbin, REPO_ROOT / "benchmarks", log)
        if options.servers is not None:
            unknown = set(options.servers) - {d.name for d in defs} - {REFERENCE}
            for name in sorted(unknown):
                skipped.append((name, "not available here"))
            defs = [d for d in defs if d.name in options.servers or d.name == REFERENCE]
        runner = Runner(options, cbin, pinned, log)
        report = CompareReport(
            options=options,
            machine=machine_info(),
            date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            generator=runner.generator,
            pinned=pinned,
            labels={d.name: d.label for d in defs},
            skipped=skipped,
            revision=git_revision(),
            hot_paths=hot_paths_in_use(),
        )
        with contextlib.suppress(OSError, AttributeError):  # not every system has a load average
            report.extras["load average (1 min) when the run started"] = os.getloadavg()[0]
        _run_all(report, defs, runner, log)
    return report


def _run_all(report: CompareReport, defs: list[ServerDef], runner: Runner, log: Log) -> None:
    o = report.options
    scen = o.scenarios
    if "bulk" in scen and "bulk" not in runner.cbin:
        report.skipped.append(("bulk", "the C `bulk` program could not be built"))
        scen = tuple(s for s in scen if s != "bulk")
    idle_conns = o.idle_conns
    if "idle" in scen:
        idle_conns = _raise_fd_limit(o.idle_conns)
        if idle_conns < o.idle_conns:
            report.skipped.append(("idle", f"open-file limit allows only {idle_conns:,} connections"))
            report.options = o = CompareOptions(**{**asdict(o), "idle_conns": idle_conns})
            runner.o = o
    not_idle = [d.label for d in defs if not d.idle_ok]
    if "idle" in scen and not_idle:
        report.skipped.append(
            ("idle", f"not run for {', '.join(not_idle)}: one client at a time, or one thread per client")
        )
    for rnd in range(1, o.rounds + 1):
        # Scenario by scenario, every server in turn: the reference and the others it is compared
        # with are measured minutes apart at most, whatever else the machine is doing.
        for scenario in scen:
            if scenario == "startup":
                _measure_startup(report, defs, rnd, runner, log)
                continue
            proto = _proto_of(scenario)
            for defn in defs:
                if proto not in defn.protos or (scenario == "idle" and not defn.idle_ok):
                    continue
                _measure_server(report, defn, proto=proto, scenario=scenario, rnd=rnd, runner=runner, log=log)
    for proto in ("tcp", "udp"):
        missing = [d.label for d in defs if proto not in d.protos]
        wanted = [x for x in scen if x != "startup" and _proto_of(x) == proto]
        if missing and wanted:
            report.skipped.append(
                (", ".join(wanted), f"not run for {', '.join(missing)}: no {proto.upper()} server")
            )


def _proto_of(scenario: str) -> str:
    return "udp" if scenario.startswith("udp") else "tcp"


def _measure_server(
    report: CompareReport, defn: ServerDef, *, proto: str, scenario: str, rnd: int, runner: Runner, log: Log
) -> None:
    # A fresh server for every measurement: one test's leftovers (memory, connections) must not
    # weigh on the next.
    try:
        extra = defn.idle_args(runner.o.idle_conns) if scenario == "idle" and defn.idle_args else []
        with running(defn, proto, runner.pin_server, extra) as srv:
            if scenario == "bulk":
                m = runner.bulk(defn.name, rnd, srv.port)
            elif scenario == "idle":
                m = runner.idle(defn.name, rnd, srv)
            else:
                m = runner.load(scenario, defn.name, rnd, srv.port)
            if not srv.alive():
                m = Measurement(
                    m.scenario,
                    m.server,
                    m.round,
                    m.value,
                    m.p50_us,
                    m.p99_us,
                    m.errors + 1,
                    "server died",
                )
    except (SocketlabError, OSError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
        log(f"round {rnd} {scenario} {defn.name}: failed: {exc}")
        report.skipped.append((f"{scenario}: {defn.label}, round {rnd}", f"failed: {exc}"))
        return
    report.measurements.append(m)
    unit = SCENARIO_INFO[scenario].unit
    log(
        f"round {rnd} {scenario:8} {defn.name:20} {_num(m.value):>10} {unit}"
        + (f"  ({m.note})" if m.note else "")
    )


def _measure_startup(
    report: CompareReport, defs: list[ServerDef], rnd: int, runner: Runner, log: Log
) -> None:
    if rnd == 1 and not client_available():
        report.skipped.append(("startup", "this socketlab has no `client` command yet"))
    if any(what == "startup" for what, _ in report.skipped):
        return
    server = next((d for d in defs if d.name == REFERENCE), None) or next(
        (d for d in defs if "tcp" in d.protos), None
    )
    if server is None:
        return
    try:
        with running(server, "tcp", runner.pin_server) as srv:
            m = runner.startup(rnd, srv.port)
            if rnd == 1:
                report.extras["python -c pass, ms (interpreter floor)"] = runner.interpreter_floor()
    except (SocketlabError, OSError, subprocess.TimeoutExpired) as exc:
        report.skipped.append((f"startup, round {rnd}", f"failed: {exc}"))
        return
    report.labels.setdefault("socketlab client", "socketlab client")
    report.measurements.append(m)
    log(f"round {rnd} startup  socketlab client {m.value:10.1f} ms")
