"""Which server process holds which TCP connection (Linux /proc): the per-worker connection split.

Benchmarks print it beside throughput, because a multi-worker figure means little when most
keep-alive connections sit on one worker. Linux only; elsewhere the split is reported as unknown.
"""

from __future__ import annotations

import os
from pathlib import Path

_ESTABLISHED = "01"


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from each process's parent in /proc/*/stat)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += [child for child, ppid in parent.items() if ppid == p]
    return found


def _server_side_inodes(port: int) -> set[str]:
    """Socket inodes of established connections whose *local* port is ``port`` (the server's ends)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _ESTABLISHED and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def connection_split(server_pid: int, port: int) -> list[int] | None:
    """Established connections on ``port`` per process under ``server_pid`` (processes holding none
    left out), largest first; None where /proc cannot tell."""
    if not os.path.isdir("/proc/net"):
        return None
    wanted = _server_side_inodes(port)
    counts = []
    for pid in descendants(server_pid):
        n = 0
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:[") and target[8:-1] in wanted:
                    n += 1
        except OSError:
            continue
        if n:
            counts.append(n)
    return sorted(counts, reverse=True)
