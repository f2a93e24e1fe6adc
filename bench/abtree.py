"""Benchmark this checkout against another one in the same run (``--baseline-tree PATH``).

On a shared machine two benchmark runs a minute apart differ by more than the change being
measured. So both trees' servers run side by side (an idle one costs nothing) and the load
alternates between them in short windows, A B A B ...; each figure is the median over windows and
each ratio the median of the per-pair ratios. Beside throughput, each window reports the server's
CPU time per request (all its processes, from /proc): far less sensitive to other jobs than req/s.

The other tree runs its own code: every process for it starts with ``cwd`` and ``PYTHONPATH`` set
to that tree, so ``import xds_node`` there is that tree's package (see :func:`tree_env`).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import LoadResult, run_load

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port nobody listens on now (the machine is shared: fixed ports collide)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_env(tree: Path, **extra: str) -> dict[str, str]:
    """Environment for a process running ``tree``'s code."""
    return {**os.environ, "PYTHONPATH": str(tree), **extra}


def run_in_tree(tree: Path, code: str, timeout: float = 1800) -> str:
    """Run Python ``code`` with ``tree``'s packages; its stdout's last line (a result)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=tree_env(tree), capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"in {tree}: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def check_tree(tree: Path) -> None:
    """Refuse a baseline whose imports would resolve to this checkout (the comparison would be void)."""
    where = run_in_tree(tree, "import xds_node, bench; print(xds_node.__file__)")
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"--baseline-tree {tree}: its processes import xds_node from {where}")


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its children."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = {pid}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                pids.add(int(entry))
    total = 0
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(stat[11]) + int(stat[12])
    return total / tick


@dataclass
class Window:
    rps: float
    p50: float
    p99: float
    cpu_us: float  # server CPU per answered request
    errors: int


def window(port: int, pid: int, make_request: Callable, *, concurrency: int, duration: float,
           warmup: float = 0.3) -> Window:
    """One closed-loop load window against the server ``pid`` listening on ``port``."""
    c0 = process_tree_cpu(pid)
    res: LoadResult = asyncio.run(run_load("127.0.0.1", port, make_request, concurrency=concurrency,
                                           duration=duration, warmup=warmup))
    used = process_tree_cpu(pid) - c0
    answered = sum(res.statuses.values())
    # the warm-up's requests are not counted but their CPU is: scale it out
    cpu_us = used * res.seconds / (res.seconds + warmup) / max(1, answered) * 1e6
    return Window(res.rps, res.pct(50), res.pct(99), cpu_us, res.errors)


@dataclass
class Series:
    label: str
    windows: list[Window] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(w, attr) for w in self.windows)


def alternate(runs: Sequence[tuple[str, Callable[[], Window]]], rounds: int) -> dict[str, Series]:
    """Run each window function in turn, ``rounds`` times (A B C A B C ...)."""
    out = {label: Series(label) for label, _ in runs}
    for _ in range(rounds):
        for label, fn in runs:
            out[label].windows.append(fn())
    return out


def pair_ratio(a: Series, b: Series, attr: str = "rps") -> float:
    """Median of a/b over the windows taken side by side."""
    return statistics.median(getattr(x, attr) / getattr(y, attr) for x, y in zip(a.windows, b.windows, strict=True)
                             if getattr(y, attr))


def describe(s: Series) -> str:
    return (f"{s.median('rps'):8.1f} req/s  p50 {s.median('p50'):6.2f} ms  p99 {s.median('p99'):7.2f} ms  "
            f"CPU {s.median('cpu_us'):6.0f} us/request  errors {sum(w.errors for w in s.windows)}")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"
