"""``xds-node conformance ...``: run the harness from the command line.

    xds-node conformance list
    xds-node conformance run --target https://partner.example.org --suite registry --suite repository \\
        [--sign-with KEY --cert CERT --requester-home urn:oid:...] [--mtls-cert C --mtls-key K] \\
        [--registry-path /XDS/Registry ...] [--var name=value ...] [--junit out.xml] [--html out.html]
    xds-node conformance run --target URL --nist-testkit path/to/xdstools/testkit/tests

Exit status 0 only when every required case of every suite passed.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from .cases import ROLES, list_suites, load_suite

__all__ = ["add_parsers", "build_runner", "cmd_run"]


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``conformance`` under the ``xds-node`` command line."""
    p = subparsers.add_parser("conformance", help="run the conformance harness against a node or a partner")
    sub = p.add_subparsers(dest="conformance_command", required=True)

    ls = sub.add_parser("list", help="list the bundled suites and their cases")
    ls.set_defaults(func=cmd_list)

    run = sub.add_parser("run", help="run suites (or a NIST testkit) against --target")
    run.add_argument("--target", required=True, help="base URL of the node under test, e.g. https://host:8443")
    run.add_argument("--suite", action="append", default=[],
                     help=f"suite name ({', '.join(list_suites())}) or path to a suite .toml; repeatable; 'all'")
    run.add_argument("--case", action="append", default=[], help="run only these case ids")
    run.add_argument("--nist-testkit", type=Path,
                     help="run the NIST XDS Toolkit tests under this directory as NIST does (index.idx sections, "
                          "a patient per test, assertions); every skip names its missing input")
    run.add_argument("--no-seed", action="store_true", help="NIST: do not register the stored-query seed first")
    run.add_argument("--sign-with", type=Path, metavar="KEY", help="PEM private key the target pinned (SAML/WSS)")
    run.add_argument("--cert", type=Path, metavar="CERT", help="PEM certificate for --sign-with")
    run.add_argument("--requester-home", default="urn:oid:1.3.6.1.4.1.21367.2026.2.1",
                     help="homeCommunityId the SAML assertion claims (the partner entry the target has for us)")
    run.add_argument("--purpose", default="TREATMENT", help="purpose of use in the assertion")
    run.add_argument("--audience", help="Audience the valid assertion names (targets that require one)")
    run.add_argument("--client-key", type=Path, metavar="KEY",
                     help="PEM key of an internal client the target pinned (clients.toml): signs /ig/* calls")
    run.add_argument("--client-cert", type=Path, metavar="CERT", help="PEM certificate for --client-key")
    run.add_argument("--client-home", help="the target's homeCommunityId, claimed by --client-key's assertion "
                     "(default: --var home)")
    run.add_argument("--mtls-cert", type=Path, help="client certificate (PEM) for mutual TLS")
    run.add_argument("--mtls-key", type=Path, help="client key (PEM) for mutual TLS")
    run.add_argument("--ca", type=Path, help="CA bundle to verify the target's TLS certificate")
    run.add_argument("--insecure", action="store_true", help="do not verify the target's TLS certificate")
    run.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    run.add_argument("--allow-writes", action="store_true",
                     help="also run the cases that store test documents in the target (ITI-41/ITI-42)")
    for role, default in ROLES.items():
        run.add_argument(f"--{role.replace('_', '-')}-path", dest=f"path_{role}", default=default,
                         help=f"{role} endpoint path or full URL (default {default})")
    run.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                     help="a case variable, e.g. home=urn:oid:... gw_patient=ID^^^&OID&ISO; repeatable")
    run.add_argument("--vars", type=Path, help="TOML file of case variables (name = \"value\")")
    run.add_argument("--junit", type=Path, help="write a JUnit XML report here")
    run.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    run.add_argument("--quiet", action="store_true", help="no live progress display")
    run.set_defaults(func=cmd_run)


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    for name in list_suites():
        suite = load_suite(name)
        console.print(f"[bold]{name}[/] - {suite.title}")
        for case in suite.cases:
            needs = f"  [dim](needs {', '.join(case.needs)})[/]" if case.needs else ""
            if case.writes:
                needs += "  [dim](writes: --allow-writes)[/]"
            console.print(f"  {case.id}: {case.title}{needs}")
    return 0


def _variables(args: argparse.Namespace) -> dict[str, str]:
    values: dict[str, str] = {}
    if args.vars:
        with args.vars.open("rb") as fh:
            values.update({k: str(x) for k, x in tomllib.load(fh).items()})
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--var {item!r}: expected NAME=VALUE")
        values[name.strip()] = value
    if args.audience:
        values.setdefault("audience", args.audience)
    return values


def build_runner(args: argparse.Namespace, progress=None):
    from .runner import Runner, Target
    from .security import Signer

    verify: bool | str = str(args.ca) if args.ca else not args.insecure
    client_cert = (str(args.mtls_cert), str(args.mtls_key or args.mtls_cert)) if args.mtls_cert else None
    target = Target(args.target, paths={role: getattr(args, f"path_{role}") for role in ROLES}, verify=verify,
                    client_cert=client_cert, timeout=args.timeout)
    signer = None
    if args.sign_with or args.cert:
        if not (args.sign_with and args.cert):
            raise SystemExit("--sign-with and --cert go together")
        signer = Signer.from_files(args.sign_with, args.cert, home_community_id=args.requester_home,
                                   purpose=args.purpose, audience=args.audience)
    variables = _variables(args)
    client_signer = None
    if args.client_key or args.client_cert:
        if not (args.client_key and args.client_cert):
            raise SystemExit("--client-key and --client-cert go together")
        home = args.client_home or variables.get("home")
        if not home:
            raise SystemExit("--client-key needs the target's homeCommunityId: --client-home or --var home=...")
        client_signer = Signer.from_files(args.client_key, args.client_cert, home_community_id=home,
                                          purpose=args.purpose, audience=args.audience)
    kwargs = {"progress": progress} if progress is not None else {}
    return Runner(target, signer=signer, variables=variables, client_signer=client_signer,
                  allow_writes=args.allow_writes, **kwargs)


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from . import report

    console = Console(stderr=True)
    names = args.suite or ([] if args.nist_testkit else ["all"])
    if "all" in names:
        names = [n for n in list_suites()] + [n for n in names if n != "all"]
        names = list(dict.fromkeys(n for n in names if n != "all"))
    suites = [load_suite(n) for n in names]
    results = []
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.fields[tally]}"), TimeElapsedColumn(), console=console,
                        transient=True, disable=args.quiet)
    tally = {"passed": 0, "failed": 0, "skipped": 0, "xfail": 0}
    task = progress.add_task("starting", total=sum(len(s.cases) for s in suites) or None, tally="")

    def on_event(event: str, obj) -> None:
        if event == "start":
            progress.update(task, description=f"{obj.id}")
        else:
            tally[obj.outcome] = tally.get(obj.outcome, 0) + 1
            progress.update(task, advance=1, tally=f"{tally['passed']} passed, {tally['failed']} failed, "
                                                   f"{tally['skipped'] + tally['xfail']} skipped")
            if obj.outcome == "failed":
                progress.console.print(f"[red]FAILED[/] {obj.id}: {obj.reason}")

    runner = build_runner(args, on_event)
    with progress:
        for suite in suites:
            results.append(runner.run(suite, only=args.case))
        if args.nist_testkit:
            from .nist.run import run_nist

            results.append(run_nist(runner, args.nist_testkit, seed=not args.no_seed))

    table = Table(title=f"conformance against {args.target}")
    for col in ("suite", "cases", "passed", "failed", "skipped", "time", "result"):
        table.add_column(col)
    for r in results:
        table.add_row(r.suite, str(len(r.cases)), f"[green]{r.count('passed')}[/]", f"[red]{r.count('failed')}[/]",
                      str(r.count("skipped") + r.count("xfail")), f"{r.seconds:.1f} s",
                      "[green]OK[/]" if r.ok else "[red]FAILED[/]")
    Console().print(table)
    for r in results:
        for c in r.cases:
            if c.outcome == "failed":
                Console().print(f"[red]FAILED[/] {r.suite}/{c.id}: {c.reason}")
            elif r.suite.startswith("nist:") and c.outcome != "passed":
                # NIST: every skip says which input it lacked, so a skip never hides a failure
                Console().print(f"{c.outcome.upper()} {r.suite}/{c.id}: {c.reason}", markup=False)
    if args.junit:
        console.print(f"JUnit report: {report.write_junit(results, args.junit)}")
    if args.html:
        console.print(f"HTML report: {report.write_html(results, args.html)}")
    return 0 if all(r.ok for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m conformance.commands run ...`` works before the CLI line is wired in."""
    parser = argparse.ArgumentParser(prog="xds-node")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
