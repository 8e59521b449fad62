"""Soak test: `socketlab serve` under good and hostile clients and proxy faults, for a bounded time.

Loopback only. Starts one TCP and one UDP `upper` server (real processes, the CLI as a user runs it,
with short timeouts so the limits fire often), a TCP proxy slicing the stream and a UDP proxy losing
10% each way, then runs a mix for --minutes (default 10):

  good     TCP clients sending random lines in random chunks, each answer checked, reconnecting;
           the same through the slicing TCP proxy; a UDP client through the lossy proxy, retrying;
  hostile  idle connections, slowloris (a byte at a time), over-long lines, clients that send and
           never read, resets mid-line, bursts of connections above --max-connections, a UDP flood
           from several loopback addresses (rate limit on for loopback), amplification attempts.

Every --sample seconds it prints the servers' memory (VmRSS) and open descriptors, and at the end a
summary (also as JSON with --json FILE). Exit 0 when no good client got a wrong answer and both
servers are alive and leave cleanly on SIGTERM; 1 otherwise.

    scripts/soak                 # 10 minutes
    scripts/soak --minutes 2     # the run recorded in docs/reliability.md
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from socketlab.core.text import upper_bytes  # noqa: E402 - after the path is set

LISTENING = re.compile(r"listening on \[?([^\]\s]+?)\]?:(\d+)\s*$")
WORDS = ["ação", "coração", "não", "sockets", "servidor", "cliente", "straße", "linha", "ok", "é"]


@dataclass
class Tally:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    lines: list[str] = field(default_factory=list)


def start(name: str, args: list[str]) -> Process:
    env = dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "socketlab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 15
    lines: list[str] = []
    port = 0
    while time.monotonic() < deadline:
        raw = proc.stdout.readline()
        if not raw:
            break
        line = raw.decode("utf-8", "replace").rstrip()
        lines.append(line)
        m = LISTENING.search(line)
        if m:
            port = int(m[2])
            break
    if not port:
        proc.kill()
        raise SystemExit(f"soak: {name} did not start: {lines}")
    p = Process(name, proc, port, lines)
    # Keep reading its output so a full pipe never stalls it.
    threading.Thread(target=_drain, args=(p,), daemon=True).start()
    return p


def _drain(p: Process) -> None:
    assert p.proc.stdout is not None
    for raw in iter(p.proc.stdout.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        if "statistics:" in line or "dropped or refused" in line or "Traceback" in line or "Error" in line:
            p.lines.append(line)
        if len(p.lines) > 10_000:
            del p.lines[:5_000]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- clients ----------------------------------------------------------------------------------------


def _payload(rng: random.Random, lines: int) -> bytes:
    out = []
    for n in range(lines):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8)))
        out.append(f"{n} {text}".encode() + (b"\r\n" if rng.random() < 0.2 else b"\n"))
    return b"".join(out)


async def good_tcp(port: int, seed: int, stop: asyncio.Event, tally: Tally, label: str) -> None:
    rng = random.Random(seed)  # noqa: S311 - dice for test traffic, not secrets
    while not stop.is_set():
        payload = _payload(rng, rng.randint(1, 200))
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except (OSError, TimeoutError):
            tally.add(f"{label} connect failed")
            await asyncio.sleep(0.5)
            continue
        try:
            pos = 0
            while pos < len(payload):
                size = rng.choice((1, 2, 3, rng.randint(1, 64), rng.randint(64, 1500)))
                writer.write(payload[pos : pos + size])
                pos += size
                await writer.drain()
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 30)
            if answer == upper_bytes(payload):
                tally.add(f"{label} right", payload.count(b"\n"))
            elif answer == b"ERR busy\n":
                tally.add(f"{label} busy")
            else:
                tally.add(f"{label} WRONG")
        except (OSError, TimeoutError) as exc:
            tally.add(f"{label} {type(exc).__name__}")
        finally:
            writer.close()
        await asyncio.sleep(rng.random() * 0.2)


async def good_udp(port: int, stop: asyncio.Event, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(("127.0.0.1", port))
    n = 0
    try:
        while not stop.is_set():
            n += 1
            request = f"datagrama {n} ação".encode()
            for _attempt in range(4):  # the first try and 3 retries, as the client does
                await loop.sock_sendall(sock, request)
                try:
                    answer = await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.5)
                except TimeoutError:
                    continue
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                # A late answer to an earlier request (duplicated or delayed) is skipped.
                while answer != upper_bytes(request) and answer.startswith(b"DATAGRAMA"):
                    try:
                        answer = await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.5)
                    except TimeoutError:
                        break
                if answer == upper_bytes(request):
                    tally.add("udp via lossy proxy answered")
                    break
            else:
                tally.add("udp via lossy proxy lost")
            await asyncio.sleep(0.02)
    finally:
        sock.close()


async def idle(port: int, stop: asyncio.Event, tally: Tally) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(1)
            continue
        data = await reader.read()  # until the idle timeout closes us
        tally.add("idle closed by server" if data in (b"", b"ERR busy\n") else "idle got data?")
        writer.close()


async def slowloris(port: int, stop: asyncio.Event, tally: Tally) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(1)
            continue
        try:
            while not stop.is_set() and not reader.at_eof():
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.5)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(100), 0.01)
            tally.add("slowloris closed by server")
        except OSError:
            tally.add("slowloris closed by server")
        finally:
            writer.close()


async def long_line(port: int, stop: asyncio.Event, tally: Tally) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"antes\n" + b"z" * 100_000 + b"\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            tally.add("long line refused" if answer.endswith(b"ERR line too long\n") else "long line other")
            writer.close()
        except (OSError, TimeoutError):
            tally.add("long line reset")
        await asyncio.sleep(1)


async def never_reads(port: int, stop: asyncio.Event, tally: Tally) -> None:
    chunk = b"y" * 1000 + b"\n"
    while not stop.is_set():
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sent = 0
            while sent < 64 * 1024 * 1024 and not stop.is_set():
                writer.write(chunk * 64)
                await asyncio.wait_for(writer.drain(), 30)
                sent += len(chunk) * 64
            writer.close()
        except (OSError, TimeoutError):
            tally.add("non-reader disconnected")
        await asyncio.sleep(1)


async def resets(port: int, stop: asyncio.Event, tally: Tally) -> None:
    import struct  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    while not stop.is_set():
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, b"inteira\nmetade de uma li")
            await asyncio.sleep(random.random() / 10)  # noqa: S311 - not a secret
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tally.add("reset mid-line")
        except OSError:
            pass  # refused while the server was busy: nothing to reset
        finally:
            sock.close()
        await asyncio.sleep(0.2)


async def bursts(port: int, stop: asyncio.Event, tally: Tally, size: int) -> None:
    while not stop.is_set():
        opened = []
        for _ in range(size):
            with contextlib.suppress(OSError):
                opened.append(await asyncio.open_connection("127.0.0.1", port))
        busy = 0
        for reader, _writer in opened:
            with contextlib.suppress(OSError, TimeoutError):
                if await asyncio.wait_for(reader.read(100), 0.2) == b"ERR busy\n":
                    busy += 1
        tally.add("burst told busy", busy)
        for _reader, writer in opened:
            writer.close()
        await asyncio.sleep(15)


async def udp_flood(port: int, stop: asyncio.Event, tally: Tally) -> None:
    socks = []
    for i in range(2, 6):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.0.{i}", 0))
        s.setblocking(False)
        socks.append(s)
    try:
        while not stop.is_set():
            for n in range(200):
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.sendto(b"flood %d" % n, ("127.0.0.1", port))
                        # ŉ grows by half in upper case: an amplification attempt.
                        s.sendto("ŉ".encode() * 8, ("127.0.0.1", port))
            tally.add("udp flood datagrams", 200 * len(socks) * 2)
            for s in socks:
                with contextlib.suppress(OSError):
                    while s.recv(2048):
                        tally.add("udp flood answered")
            await asyncio.sleep(0.5)
    finally:
        for s in socks:
            s.close()


# --- the run ----------------------------------------------------------------------------------------


async def run(
    args: argparse.Namespace, tcp: Process, udp: Process, tproxy: Process, uproxy: Process
) -> Tally:
    tally = Tally()
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(good_tcp(tcp.port, i, stop, tally, "tcp")) for i in range(args.good)]
    tasks += [
        asyncio.ensure_future(good_tcp(tproxy.port, 1000 + i, stop, tally, "tcp via slicing proxy"))
        for i in range(5)
    ]
    tasks.append(asyncio.ensure_future(good_udp(uproxy.port, stop, tally)))
    tasks += [asyncio.ensure_future(idle(tcp.port, stop, tally)) for _ in range(50)]
    tasks += [asyncio.ensure_future(slowloris(tcp.port, stop, tally)) for _ in range(20)]
    tasks += [asyncio.ensure_future(long_line(tcp.port, stop, tally)) for _ in range(2)]
    tasks += [asyncio.ensure_future(never_reads(tcp.port, stop, tally)) for _ in range(3)]
    tasks.append(asyncio.ensure_future(resets(tcp.port, stop, tally)))
    burst = args.max_connections if args.burst is None else args.burst
    if burst:
        tasks.append(asyncio.ensure_future(bursts(tcp.port, stop, tally, burst)))
    tasks.append(asyncio.ensure_future(udp_flood(udp.port, stop, tally)))
    started = time.monotonic()
    end = started + args.minutes * 60
    print(
        f"{'t':>6} {'tcp rss KiB':>12} {'tcp fds':>8} {'udp rss KiB':>12} {'udp fds':>8}  good answers",
        flush=True,
    )
    samples = []
    while time.monotonic() < end:
        await asyncio.sleep(min(args.sample, max(0.0, end - time.monotonic())))
        t = time.monotonic() - started
        sample = {
            "t": round(t, 1),
            "tcp_rss_kib": rss_kib(tcp.proc.pid),
            "tcp_fds": fds(tcp.proc.pid),
            "udp_rss_kib": rss_kib(udp.proc.pid),
            "udp_fds": fds(udp.proc.pid),
        }
        samples.append(sample)
        good = sum(v for k, v in tally.counts.items() if k.endswith("right"))
        print(
            f"{t:6.0f} {sample['tcp_rss_kib']:12} {sample['tcp_fds']:8} {sample['udp_rss_kib']:12} "
            f"{sample['udp_fds']:8}  {good}",
            flush=True,
        )
        if tcp.proc.poll() is not None or udp.proc.poll() is not None:
            print("soak: a server died", flush=True)
            break
    stop.set()
    await asyncio.sleep(0.5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tally.counts["samples"] = len(samples)
    args.samples = samples
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/soak", description="Soak test of socketlab serve (see the top of this file)."
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--good", type=int, default=20, help="good TCP clients at once (default 20)")
    parser.add_argument("--max-connections", type=int, default=200, help="the TCP server's cap (default 200)")
    parser.add_argument(
        "--burst",
        type=int,
        help="connections opened at once every 15 s (default: --max-connections; 0: no bursts)",
    )
    parser.add_argument("--loop", default="auto", help="the servers' event loop (default auto)")
    parser.add_argument("--json", metavar="FILE", help="also write the summary and samples as JSON")
    args = parser.parse_args()
    if args.minutes <= 0 or args.minutes > 24 * 60:
        parser.error("--minutes must be above 0 and at most a day")
    common = ["--host", "127.0.0.1", "--port", "0", "--loop", args.loop, "--stats", "--stats-interval", "10"]
    tcp = start(
        "tcp server",
        [
            "serve",
            "tcp",
            *common,
            "--idle-timeout",
            "5",
            "--line-deadline",
            "3",
            "--send-timeout",
            "3",
            "--max-connections",
            str(args.max_connections),
        ],
    )
    udp = start("udp server", ["serve", "udp", *common, "--limit-loopback"])
    tproxy = start(
        "tcp proxy",
        ["proxy", "tcp", "--listen", "0", "--to", f"127.0.0.1:{tcp.port}", "--slice", "7", "--seed", "1"],
    )
    uproxy = start(
        "udp proxy",
        ["proxy", "udp", "--listen", "0", "--to", f"127.0.0.1:{udp.port}", "--loss", "10%", "--seed", "1"],
    )
    processes = [tcp, udp, tproxy, uproxy]
    try:
        tally = asyncio.run(run(args, tcp, udp, tproxy, uproxy))
    finally:
        codes = {}
        for p in processes:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM if p.name.endswith("server") else signal.SIGINT)
        for p in processes:
            try:
                codes[p.name] = p.proc.wait(30)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                codes[p.name] = p.proc.wait(5)
    wrong = sum(v for k, v in tally.counts.items() if "WRONG" in k)
    stats = {p.name: [line for line in p.lines if "statistics:" in line][-1:] for p in (tcp, udp)}
    tracebacks = [line for p in processes for line in p.lines if "Traceback" in line]
    print("\nsummary:", flush=True)
    for name, n in sorted(tally.counts.items()):
        print(f"  {name}: {n}")
    for name, lines in stats.items():
        print(f"  {name} last {lines[0].split(' ', 1)[1] if lines else 'statistics: none'}")
    samples = args.samples
    if samples:
        for key in ("tcp_rss_kib", "tcp_fds", "udp_rss_kib", "udp_fds"):
            values = [s[key] for s in samples]
            print(f"  {key}: first {values[0]}, max {max(values)}, last {values[-1]}")
    print(f"  exit codes: {codes}; wrong answers: {wrong}; tracebacks: {len(tracebacks)}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"counts": tally.counts, "samples": samples, "exit_codes": codes}, indent=1)
        )
    ok = wrong == 0 and not tracebacks and codes.get("tcp server") == 0 and codes.get("udp server") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
