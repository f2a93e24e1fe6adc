"""Conformance: run bundled suites against a target in the background (``xds-node conformance run``
in a child process, exactly as from the command line) and keep every run's HTML report in the
database, listed and viewable."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import insert, select, update
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from xds_node.console.tables import conformance_runs
from xds_node.console.web import Console, Page, roles, route

PAGE = Page(key="conformance", title="Conformance", order=80, roles=roles("administrator", "operator"))
#: A report is our own HTML with an inline stylesheet and no script: it gets its own policy.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
RUN_TIMEOUT = 3600


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def command(settings, target: str, suites: list[str], *, allow_writes: bool, sign: bool, report: Path) -> list[str]:
    """The ``xds-node conformance run`` command line for a console run."""
    cmd = [sys.executable, "-m", "xds_node.cli", "conformance", "run", "--target", target, "--html", str(report),
           "--quiet"]
    for s in suites:
        cmd += ["--suite", s]
    if allow_writes:
        cmd.append("--allow-writes")
    keys = settings.keys_dir
    if sign and (keys / "node.key.pem").exists():
        cmd += ["--sign-with", str(keys / "node.key.pem"), "--cert", str(keys / "node.cert.pem"),
                "--requester-home", settings.home_community_id]
    return cmd


def _run(engine, run_id: int, cmd: list[str], report: Path) -> None:
    """Wait for the run and store its report (a thread of the console process)."""
    status, summary, html = "error", "", None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        status = {0: "passed", 1: "failed"}.get(proc.returncode, "error")
        summary = (proc.stdout + proc.stderr)[-20_000:]
        if report.exists():
            html = report.read_text(encoding="utf-8", errors="replace")
    except subprocess.TimeoutExpired:
        summary = f"stopped after {RUN_TIMEOUT} s"
    except OSError as exc:
        summary = f"could not start: {exc}"
    finally:
        report.unlink(missing_ok=True)
        with engine.begin() as conn:
            conn.execute(update(conformance_runs).where(conformance_runs.c.id == run_id).values(
                status=status, summary=summary, report_html=html, finished_at=_now()))


def settle_interrupted(engine, now: datetime | None = None) -> int:
    """Runs still marked ``running`` well past RUN_TIMEOUT cannot be running anywhere (every runner
    stops its run at the timeout and records how it ended): their console process was stopped
    or killed first. Mark them ``interrupted`` so they do not show as running forever."""
    now = now or _now()
    cutoff = now - timedelta(seconds=RUN_TIMEOUT + 120)
    with engine.begin() as conn:
        return conn.execute(update(conformance_runs).where(
            conformance_runs.c.status == "running", conformance_runs.c.started_at < cutoff).values(
            status="interrupted", finished_at=now,
            summary="the console process stopped before this run finished; its result was not recorded")).rowcount


def routes(console: Console) -> list:
    from conformance.cases import list_suites

    engine = console.engine
    settings = console.settings

    def runs() -> list[dict]:
        t = conformance_runs
        settle_interrupted(engine)
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(t.c.id, t.c.target, t.c.suites, t.c.started_by, t.c.started_at, t.c.finished_at, t.c.status,
                       t.c.report_html.is_not(None).label("has_report")).order_by(t.c.id.desc()).limit(100))]

    def index(request: Request, *, error: str = "", status: int = 200) -> Response:
        return console.render(request, "conformance/index.html", status_code=status, runs=runs(), suites=list_suites(),
                              error=error, default_target=settings.public_url)

    def start(request: Request) -> Response:
        form = request.state.form
        target = str(form.get("target") or "").strip()
        chosen = [s for s in form.getlist("suite") if isinstance(s, str)]
        url = urlsplit(target)
        if url.scheme not in ("http", "https") or not url.hostname or len(target) > 500:
            return index(request, error="the target must be an http(s) URL such as https://gateway.example.org:8443",
                         status=400)
        known = set(list_suites())
        if not chosen or any(s not in known for s in chosen):
            return index(request, error="choose one or more of the bundled suites", status=400)
        allow_writes = form.get("allow_writes") == "yes"
        sign = form.get("sign") == "yes"
        console.audit(request, "conformance-run", reason=f"{', '.join(chosen)} against {target}"
                      + (" (writes allowed)" if allow_writes else ""))
        with engine.begin() as conn:
            run_id = conn.execute(insert(conformance_runs).values(
                target=target, suites=",".join(chosen), started_by=request.state.user.name, started_at=_now(),
                status="running", summary="")).inserted_primary_key[0]
        report = Path(tempfile.mkdtemp(prefix="xds-conformance-")) / "report.html"
        cmd = command(settings, target, chosen, allow_writes=allow_writes, sign=sign, report=report)
        threading.Thread(target=_run, args=(engine, run_id, cmd, report), daemon=True,
                         name=f"conformance-{run_id}").start()
        return RedirectResponse("/conformance", status_code=303)

    def report(request: Request) -> Response:
        raw = request.query_params.get("id", "")
        row = None
        if raw.isdigit():
            with engine.connect() as conn:
                row = conn.execute(select(conformance_runs).where(conformance_runs.c.id == int(raw))).first()
        if row is None:
            return Response("no such run", status_code=404, media_type="text/plain")
        if row.report_html is None:
            return console.render(request, "conformance/run.html", run=row)
        return HTMLResponse(row.report_html, headers={"content-security-policy": REPORT_CSP})

    return [route("", index), route("/run", start, methods=["POST"]), route("/report", report)]
