"""Tail-latency probe for ``bench_gateway --breakdown`` (never part of a node).

Put this directory first on PYTHONPATH and set XDS_TAILPROBE_DIR: every Python process started so,
the server's workers included, records its garbage-collector passes and the wall time of each
database call (SQLAlchemy's DefaultDialect begin / execute / executemany / commit, and each
group-commit round committed on the event loop; on SQLite these include any wait for the write
lock), each with its wall-clock time, and writes them to ``<dir>/probe-<pid>.json`` when its server
shuts down (uvicorn re-raises SIGTERM after a graceful shutdown, so neither atexit nor
multiprocessing's finalizers run in a worker) or, for other processes, at exit.
"""

import atexit
import gc
import json
import os
import time

_DIR = os.environ.get("XDS_TAILPROBE_DIR")

if _DIR:
    _stats: dict = {"pid": os.getpid(), "gc": [], "db": []}
    _gc_start = [0.0]

    def _on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            _gc_start[0] = time.perf_counter()
        else:
            _stats["gc"].append((info["generation"], (time.perf_counter() - _gc_start[0]) * 1000, time.time()))

    gc.callbacks.append(_on_gc)

    def _timed(cls, name: str) -> None:
        original = getattr(cls, name)

        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _stats["db"].append((name.removeprefix("do_"), (time.perf_counter() - t0) * 1000, time.time()))

        setattr(cls, name, call)

    try:
        from sqlalchemy.engine.default import DefaultDialect

        for _name in ("do_begin", "do_execute", "do_executemany", "do_commit"):
            _timed(DefaultDialect, _name)
    except ImportError:
        pass
    try:  # group-commit rounds (audit rows, replay entries) run on raw connections: time each round
        from xds_node.rounds import GroupCommit

        GroupCommit.do_round_on_loop = GroupCommit._commit_on_loop
        _timed(GroupCommit, "do_round_on_loop")
        GroupCommit._commit_on_loop = GroupCommit.do_round_on_loop
    except ImportError:
        pass

    def _dump() -> None:
        if _stats["db"] or _stats["gc"]:
            with open(os.path.join(_DIR, f"probe-{os.getpid()}.json"), "w") as fh:
                json.dump(_stats, fh)

    atexit.register(_dump)
    try:
        import uvicorn.server

        _shutdown = uvicorn.server.Server.shutdown

        async def _shutdown_then_dump(self, *args, **kwargs):
            try:
                return await _shutdown(self, *args, **kwargs)
            finally:
                _dump()

        uvicorn.server.Server.shutdown = _shutdown_then_dump
    except ImportError:
        pass
