"""Administration commands: keys, partners, clients, consent, audit, patients.

Each command opens the node's database (from the same settings ``serve`` uses) and calls the
stores directly; none needs a running node.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table

from xds_node.config import Settings, load_settings, require_data_dir
from xds_node.term import console, to_json

#: The demo partner `keys init` creates: a fictional hospital community signing with its own key.
DEMO_PARTNER_HCID = "urn:oid:1.3.6.1.4.1.21367.2026.2.1"
DEMO_PARTNER_NAME = "demo-partner"
SELF_PARTNER_NAME = "this-node"


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    return load_settings(getattr(args, "config", None), **overrides)


def _node(args: argparse.Namespace):
    from xds_node.node import Node

    settings = _settings(args)
    require_data_dir(settings, init=getattr(args, "init", False))
    return Node(settings)


_UNITS = {"m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400,
          "w": 604800, "week": 604800}


def _when(value: str | None) -> datetime | None:
    """An ISO 8601 time (naive means UTC), or a time back from now: ``2 hours ago``, ``7d``, ``30m``."""
    import re
    from datetime import timedelta

    from xds_node.config import ConfigError

    if not value:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(m|min|minute|h|hour|d|day|w|week)s?(\s+ago)?\s*", value.lower())
    if m:
        return datetime.now(UTC) - timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not a time: use ISO 8601 (2026-11-30T09:00, UTC unless a zone is "
                          f"given) or a time back from now such as '2 hours ago' or '7d'") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# --- keys ---------------------------------------------------------------------------------------
def init_keys(settings: Settings, *, force: bool = False) -> dict[str, Path]:
    """Demo keys for this node and a demo partner, and a partners.toml pinning both.

    ``this-node`` lets the node's own initiating gateway call its responding gateway (loopback);
    ``demo-partner`` is the identity a demo client or the conformance harness signs with.
    """
    from xds_node.security.keys import generate_demo_keys, load_key_and_cert
    from xds_node.security.trust import Partner, TrustStore

    keys = settings.keys_dir
    node_key, node_cert = keys / "node.key.pem", keys / "node.cert.pem"
    partner_key, partner_cert = keys / "demo-partner.key.pem", keys / "demo-partner.cert.pem"
    for (key, cert), cn in (((node_key, node_cert), settings.organization_name),
                            ((partner_key, partner_cert), "xds-node demo partner")):
        if force or not (key.exists() and cert.exists()):
            made_key, made_cert = generate_demo_keys(keys, common_name=cn)
            made_key.replace(key)
            made_cert.replace(cert)
    path = settings.partners_path
    if force or not path.exists():
        base = settings.public_url
        store = TrustStore()
        store.add(Partner(name=DEMO_PARTNER_NAME, home_community_id=DEMO_PARTNER_HCID,
                          certificates=[load_key_and_cert(partner_key, partner_cert)[1]]))
        store.add(Partner(name=SELF_PARTNER_NAME, home_community_id=settings.home_community_id,
                          certificates=[load_key_and_cert(node_key, node_cert)[1]],
                          endpoints={"xcpd": base + "/xcpd", "xca_query": base + "/xca/query",
                                     "xca_retrieve": base + "/xca/retrieve"}))
        path.parent.mkdir(parents=True, exist_ok=True)
        store.save(path)
    return {"node key": node_key, "node certificate": node_cert, "demo partner key": partner_key,
            "demo partner certificate": partner_cert, "partners": path}


def cmd_keys_init(args: argparse.Namespace) -> int:
    for name, path in init_keys(_settings(args), force=args.force).items():
        print(f"{name:26} {path}")
    return 0


# --- partners -----------------------------------------------------------------------------------
def cmd_partners_list(args: argparse.Namespace) -> int:
    from xds_node.security.trust import TrustStore

    settings = _settings(args)
    if not settings.partners_path.exists():
        print(f"no partners file at {settings.partners_path}", file=sys.stderr)
        return 1
    partners = TrustStore.load(settings.partners_path).partners()
    if args.json:
        print(to_json([{"name": p.name, "home_community_id": p.home_community_id,
                        "communities": list(p.communities), "issuers": list(p.issuers),
                        "endpoints": dict(p.endpoints), "certificates": [_cert_dict(c) for c in p.certificates],
                        "allow_sha1": p.allow_sha1, "retrieve_batch_size": p.retrieve_batch_size,
                        "timeout": p.timeout, "proxy": _shown_proxy(p.proxy)} for p in partners]))
        return 0
    table = Table("name", "communities", "certificate (SHA-256)", "expires", "endpoints", "options")
    for p in partners:
        for i, cert in enumerate(p.certificates or [None]):
            fp = cert.fingerprint(_sha256()).hex()[:23] + "…" if cert is not None else "-"
            expires = cert.not_valid_after_utc.date().isoformat() if cert is not None else "-"
            opts = ", ".join(f"{k}={v}" for k, v in (("sha1", p.allow_sha1), ("batch", p.retrieve_batch_size),
                                                      ("timeout", p.timeout), ("proxy", _shown_proxy(p.proxy)))
                             if v is not None)
            table.add_row(p.name if i == 0 else "", "\n".join(p.communities) if i == 0 else "", fp, expires,
                          "\n".join(f"{k}: {u}" for k, u in p.endpoints.items()) if i == 0 else "", opts)
    console().print(table)
    return 0


def _shown_proxy(proxy: str | None) -> str | None:
    """A partner's proxy as listings show it: credentials masked (they stay in partners.toml only)."""
    from xds_node.gateway.http import mask

    return mask(proxy) if proxy else None


def _cert_dict(cert) -> dict:
    return {"sha256": cert.fingerprint(_sha256()).hex(), "subject": cert.subject.rfc4514_string(),
            "expires": cert.not_valid_after_utc.isoformat()}


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


class _CliError(Exception):
    """A one-line error for the operator (exit status 2, no traceback)."""


def _read_certs(paths: list[str]) -> list:
    from cryptography import x509

    from xds_node.security.trust import _PEM_RE

    certs = []
    for c in paths:
        try:
            data = Path(c).read_bytes()
            pems = _PEM_RE.findall(data)
            if pems:
                certs.extend(x509.load_pem_x509_certificate(p) for p in pems)
            else:
                certs.append(x509.load_der_x509_certificate(data))
        except OSError as exc:
            raise _CliError(f"cannot read certificate {c}: {exc.strerror or exc}") from None
        except ValueError:
            raise _CliError(f"{c} is not a PEM or DER certificate") from None
    return certs


def _partner_from_args(args: argparse.Namespace, old=None):
    from xds_node.security.trust import Partner, valid_hcid, valid_proxy

    name = args.name or args.name_opt
    if not name:
        raise _CliError("a partner NAME is required")
    communities = list(args.community or []) + ([args.home_community_id] if args.home_community_id else [])
    if not communities and old is None:
        raise _CliError("at least one --community OID is required")
    try:
        communities = [valid_hcid(c) for c in communities] or list(old.communities)
    except ValueError as exc:
        raise _CliError(str(exc)) from None
    endpoints = {}
    for e in args.endpoint or []:
        if "=" not in e:
            raise _CliError(f"--endpoint {e!r}: expected NAME=URL")
        k, url = e.split("=", 1)
        endpoints[k] = url

    def pick(value, attr, default):
        return value if value is not None else (getattr(old, attr) if old is not None else default)

    try:
        proxy = valid_proxy(getattr(args, "proxy", None)) or (old.proxy if old is not None else None)
    except ValueError as exc:
        raise _CliError(f"--proxy: {exc}") from None

    return Partner(name=name, communities=communities, certificates=_read_certs(args.cert),
                   issuers=list(args.issuer or []) or (list(old.issuers) if old is not None else []),
                   endpoints=endpoints or (dict(old.endpoints) if old is not None else {}),
                   allow_sha1=bool(args.allow_sha1) or (old.allow_sha1 if old is not None else False),
                   retrieve_batch_size=pick(args.batch_size, "retrieve_batch_size", 50),
                   timeout=pick(args.timeout, "timeout", 30.0),
                   options=dict(old.options) if old is not None else {}, proxy=proxy)


PartnerEditError = _CliError  # what edit_partners raises: one line for the operator


def edit_partners(settings: Settings, change) -> str:
    """Read-modify-write partners.toml under a lock (``change(store)`` returns what it did, or raises
    :class:`PartnerEditError`); a running node picks the change up by itself. The CLI and the
    console both go through here and the functions below, so they validate alike."""
    from xds_node.security.filewatch import edit_lock, record_last_good
    from xds_node.security.trust import TrustStore

    path = settings.partners_path
    with edit_lock(path):
        try:
            store = TrustStore.load(path) if path.exists() else TrustStore()
        except (OSError, ValueError) as exc:
            raise _CliError(f"partners file {path} is not valid: {exc}") from None
        message = change(store)
        store.save(path)
        record_last_good(path, path.read_bytes())
    return f"{message} in {path}"


def _refuse_client_certificates(settings: Settings, partner) -> None:
    """A certificate is pinned for a partner or for an internal client, never both (the same rule
    `clients add` applies the other way round)."""
    from xds_node.security.trust import fingerprint

    if not settings.clients_path.exists():
        return
    try:
        clients = _client_store(settings)
    except (OSError, ValueError) as exc:
        raise _CliError(f"clients file {settings.clients_path} is not valid: {exc}") from None
    for cert in partner.certificates:
        client = clients.partner_for_certificate(cert)
        if client is not None:
            raise _CliError(f"certificate {fingerprint(cert)[:16]}… is pinned for internal client {client.name!r}; "
                            "an internal client's credentials cannot also be a partner's")


def add_partner(settings: Settings, args) -> str:
    """``partners add``: ``args`` has the command's fields (name, cert paths, community, endpoint ...)."""
    from xds_node.security.trust import PartnerConflict

    def change(store) -> str:
        partner = _partner_from_args(args)
        _refuse_client_certificates(settings, partner)
        if store.partner(partner.name) is not None:
            raise _CliError(f"partner {partner.name!r} already exists; use `xds-node partners replace "
                            f"{partner.name} ...` to change it")
        try:
            store.add(partner)
        except PartnerConflict as exc:
            raise _CliError(f"{exc}; use `xds-node partners replace {exc.existing} ...` to change that "
                            "partner") from None
        return f"added {partner.name} ({', '.join(partner.communities)})"

    return edit_partners(settings, change)


def replace_partner(settings: Settings, args) -> str:
    from xds_node.security.trust import PartnerConflict

    def change(store) -> str:
        name = args.name or args.name_opt
        old = store.partner(name or "")
        if old is None:
            raise _CliError(f"no partner named {name!r}; use `xds-node partners add` to add one")
        partner = _partner_from_args(args, old)
        _refuse_client_certificates(settings, partner)
        try:
            store.replace(partner)
        except PartnerConflict as exc:
            raise _CliError(str(exc)) from None
        return f"replaced {partner.name} ({', '.join(partner.communities)})"

    return edit_partners(settings, change)


def remove_partner(settings: Settings, name: str) -> str:
    def change(store) -> str:
        if store.partner(name) is None:
            raise _CliError(f"no partner named {name!r}")
        store.remove(name)
        return f"removed {name}"

    return edit_partners(settings, change)


def _partner_command(args: argparse.Namespace, edit) -> int:
    try:
        message = edit(_settings(args), args)
    except _CliError as exc:
        print(f"xds-node partners: {exc}", file=sys.stderr)
        return 2
    print(message)
    return 0


def cmd_partners_add(args: argparse.Namespace) -> int:
    return _partner_command(args, add_partner)


def cmd_partners_replace(args: argparse.Namespace) -> int:
    return _partner_command(args, replace_partner)


def cmd_partners_remove(args: argparse.Namespace) -> int:
    return _partner_command(args, lambda settings, a: remove_partner(settings, a.name))


def cmd_partners_check(args: argparse.Namespace) -> int:
    """Validate the partners file: certificates in date (a warning 30 days ahead), endpoints answer
    their WSDL; ``--signed`` also makes a real signed ITI-38 to each partner (gateway/check.py, the
    console's "check now")."""
    import asyncio

    from xds_node.gateway.check import certificate_findings, signed_finding, wsdl_finding
    from xds_node.security.trust import TrustStore

    settings = _settings(args)
    try:
        store = TrustStore.load(settings.partners_path)
    except (OSError, ValueError) as exc:
        print(f"partners file {settings.partners_path}: {exc}", file=sys.stderr)
        return 2
    problems = 0
    node = _node(args) if getattr(args, "signed", False) and not args.offline else None
    try:
        for p in store.partners():
            findings = [f for f in certificate_findings(p) if not f.ok]
            if not args.offline:
                findings += [wsdl_finding(p, name, url, args.timeout) for name, url in p.endpoints.items()]
                if node is not None:
                    findings.append(asyncio.run(signed_finding(node, p, timeout=args.timeout)))
            for f in findings:
                problems += f.state == "problem"
                prefix = "" if f.state != "warning" else "warning: "
                if f.what == "certificate" or f.what.startswith("signed"):
                    print(f"{p.name}: {f.what}: {prefix}{f.detail}")
                else:
                    print(f"{p.name}: {f.what.removeprefix('endpoint ')} {f.detail.replace(': WSDL answers', ': ok')}")
    finally:
        if node is not None:
            node.close()
    print(f"{len(store.partners())} partner(s), {problems} problem(s)")
    return 1 if problems else 0


# --- internal clients ---------------------------------------------------------------------------
def _load_certs(paths: list[str]) -> list:
    """PEM certificates from files; ValueError with a one-line reason when one is missing or not PEM."""
    from xds_node.security.trust import _load_cert_entry

    certs = []
    for c in paths:
        try:
            found = _load_cert_entry(str(Path(c).resolve()), Path("."))
        except OSError as exc:
            raise ValueError(f"cannot read {c}: {exc.strerror or exc}") from None
        except Exception:
            raise ValueError(f"{c} is not a PEM or DER certificate") from None
        certs.extend(found)
    return certs


def _client_store(settings: Settings):
    from xds_node.security.clients import ClientStore

    path = settings.clients_path
    return ClientStore.load(path, settings.home_community_id) if path.exists() else ClientStore(
        settings.home_community_id)


def cmd_clients(args: argparse.Namespace) -> int:
    """``clients add|list|remove``: one-line errors (bad file, unknown name, certificate taken), never a traceback."""
    settings = _settings(args)
    try:
        return _clients(args, settings)
    except (ValueError, OSError) as exc:
        print(f"clients {args.clients_command}: {exc}", file=sys.stderr)
        return 2


def _clients(args: argparse.Namespace, settings: Settings) -> int:
    from xds_node.security.trust import TrustStore, fingerprint

    path = settings.clients_path
    store = _client_store(settings)
    if args.clients_command == "list":
        if args.json:
            print(to_json([{"name": c.name, "certificates": [_cert_dict(cert) for cert in c.certificates]}
                           for c in store.partners()]))
            return 0
        table = Table("name", "certificate (SHA-256)", "subject", "expires")
        for c in store.partners():
            for i, cert in enumerate(c.certificates):
                table.add_row(c.name if i == 0 else "", fingerprint(cert)[:23] + "…", cert.subject.rfc4514_string(),
                              cert.not_valid_after_utc.date().isoformat())
        console().print(table)
        if not store.partners():
            print(f"no internal clients in {path}", file=sys.stderr)
        return 0
    if args.clients_command == "remove":
        try:
            store.remove(args.name)
        except KeyError:
            raise ValueError(f"no client named {args.name!r} in {path}") from None
        store.save(path)
        print(f"removed {args.name} from {path}")
        return 0
    certs = _load_certs(args.cert)
    if settings.partners_path.exists():
        partners = TrustStore.load(settings.partners_path)
        for cert in certs:
            partner = partners.partner_for_certificate(cert)
            if partner is not None:
                raise ValueError(f"certificate {fingerprint(cert)[:16]}… is pinned for partner {partner.name!r}; "
                                 "a partner's credentials cannot also be an internal client's")
    store.add(args.name, certs)
    store.save(path)
    print(f"added {args.name} to {path}")
    return 0


# --- consent ------------------------------------------------------------------------------------
def cmd_consent(args: argparse.Namespace) -> int:
    """grant / revoke / show. A patient id that is not a CX is refused (exit 2) before anything is
    written; a patient missing from the patient index is only warned about (``--force``: silent),
    because consent may be recorded before the patient's first document arrives."""
    from xds_node.security.consent import check_patient_id, format_history

    patient = args.patient
    try:
        if args.action in ("grant", "revoke"):
            patient = check_patient_id(args.patient)
        start, until = _when(args.start), _when(args.until)
    except ValueError as exc:
        print(f"consent {args.action}: {exc}", file=sys.stderr)
        return 2
    node = _node(args)
    try:
        store = node.consent_store
        if args.action in ("grant", "revoke") and not args.force and node.patients.get(patient) is None:
            print(f"consent {args.action}: warning: {patient} is not in the patient index (recording it anyway; "
                  "check the id, or add the patient with `xds-node patients add`; --force silences this)",
                  file=sys.stderr)
        try:
            if args.action == "grant":
                store.grant(patient, source=args.source, effective_from=start, effective_until=until,
                            recorded_by=args.by, note=args.note)
            elif args.action == "revoke":
                store.revoke(patient, source=args.source, effective_from=start, recorded_by=args.by,
                             note=args.note)
        except ValueError as exc:
            print(f"consent {args.action}: {exc}", file=sys.stderr)
            return 2
        status = store.status(patient)
        if args.json:
            import dataclasses

            print(to_json({"patient_id": patient, "state": status.state, "mode": node.settings.consent_mode,
                           "directives": [dataclasses.asdict(d) for d in store.history(patient)]}))
            return 0
        print(f"{patient}: {status.state} (mode {node.settings.consent_mode})")
        if args.action == "show":
            print(format_history(store.history(patient)))
    finally:
        node.close()
    return 0


# --- audit --------------------------------------------------------------------------------------
def cmd_audit(args: argparse.Namespace) -> int:
    from rich.text import Text

    from xds_node.audit.store import export, format_accounting
    from xds_node.audit.text import printable

    node = _node(args)
    try:
        if args.accounting:
            # outbound queries name the patient by the partners' ids for them: include those
            aliases = [c.remote_cx for c in node.patients.correlations_for(args.accounting)]
            rows = node.audit.accounting_of_disclosures(args.accounting, _when(args.since), _when(args.until),
                                                        aliases=aliases)
            print(to_json(rows) if args.json else format_accounting(rows, patient_id=args.accounting))
            return 0
        events = node.audit.list(since=_when(args.since), until=_when(args.until), patient_id=args.patient,
                                 partner=args.partner, transaction=args.transaction, outcome=args.outcome,
                                 limit=args.limit)
        if args.json or args.format in ("json", "csv"):
            export(events, "json" if args.json else args.format, sys.stdout)
            return 0
        table = Table("time (UTC)", "transaction", "outcome", "partner", "user", "purpose", "patient", "documents",
                      "reason", "caller")
        for e in events:
            # plain Text cells: partner-supplied values are shown, never read as rich markup, and
            # printable() escapes control characters (no forged lines, no terminal escapes)
            table.add_row(*(Text(printable(c)) for c in (
                e.time.strftime("%Y-%m-%d %H:%M:%S"), e.transaction, e.outcome,
                e.partner_organization or e.partner_community, e.user_subject_id, e.purpose_of_use,
                e.patient_id or "", str(len(e.document_ids)) if e.document_ids else "", e.reason,
                f"{e.partner or '-'} ({e.caller_kind})" if e.caller_kind else e.partner)))
        console().print(table)
    finally:
        node.close()
    return 0


# --- patients -----------------------------------------------------------------------------------
def _operator(args: argparse.Namespace) -> str:
    """Who is making an operator change: ``--by``, else the OS account running the command."""
    if getattr(args, "by", None):
        return args.by
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return ""


def cmd_patients(args: argparse.Namespace) -> int:
    import dataclasses
    import re

    from rich.text import Text

    from xds_node.audit.text import printable
    from xds_node.patients.model import Address, Demographics, Patient, parse_cx
    from xds_node.patients.report import (
        discrepancy_report,
        patient_report,
        render_discrepancies,
        render_json,
        render_text,
    )

    if args.action in ("add", "show") and (not args.patient or parse_cx(args.patient) is None):
        print(f"patients {args.action}: give the patient id as ext^^^&root&ISO, e.g. 'VET0001^^^&1.2.3&ISO'",
              file=sys.stderr)
        return 2
    if args.birth_date and not re.fullmatch(r"\d{4}(-?\d{2}(-?\d{2})?)?", args.birth_date.strip()):
        print(f"patients add: --birth-date {args.birth_date!r} is not YYYYMMDD (or YYYY, YYYYMM)", file=sys.stderr)
        return 2
    node = _node(args)
    try:
        if args.action == "add":
            given = {"given": args.given, "family": args.family, "gender": args.gender,
                     "birth_date": args.birth_date,
                     "addresses": [Address(street=[args.street] if args.street else [], city=args.city,
                                           state=args.state, postal_code=args.postal_code)]
                     if (args.street or args.city or args.postal_code) else None,
                     "telecoms": [f"tel:{args.phone}"] if args.phone else None}
            current = node.patients.get(args.patient)
            # a correction names only what changes; everything else carries over from the current version
            base = current.demographics if current is not None else Demographics()
            demo = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
            demo = Demographics.from_dict(demo.to_dict())  # normalized as every other source is
            result = node.patients.add(Patient(args.patient, demo, "cli"), actor=_operator(args))
            history = node.patients.history(args.patient)
            print(result, args.patient, f"(version {history[-1].version})" if history else "")
        elif args.action == "import":
            files = ([Path(args.patient)] if args.patient else []) + list(args.files)
            if not files:
                print("patients import: give one or more CSV or JSON-lines files", file=sys.stderr)
                return 2
            for path in files:
                try:
                    counts = node.patients.import_file(path, default_root=args.root, actor=_operator(args))
                except (OSError, ValueError) as exc:
                    print(f"{path}: {exc}", file=sys.stderr)
                    return 1
                print(path, counts)
        elif args.action == "show":
            report = patient_report(node.patients, args.patient)
            if report is None:
                print(f"{args.patient}: not in the patient index", file=sys.stderr)
                return 1
            print(render_json(report) if args.json else render_text(report))
        elif args.action == "list":
            rows = node.patients.listing(limit=args.limit)
            if args.json:
                print(to_json(rows))
            else:
                table = Table("patient id", "family", "given", "gender", "birth date", "source", "updated (UTC)")
                for r in rows:
                    table.add_row(*(Text(printable(str(r[k] or ""))) for k in (
                        "patient_id", "family", "given", "gender", "birth_date", "source")),
                        r["updated"].strftime("%Y-%m-%d %H:%M:%S") if r["updated"] else "")
                console().print(table)
                if not rows:
                    print("no patients in the patient index", file=sys.stderr)
        elif args.action == "discrepancies":
            rows = discrepancy_report(node.patients, limit=args.limit or 200)
            print(render_json(rows) if args.json else render_discrepancies(rows))
    finally:
        node.close()
    return 0


# --- fsck ---------------------------------------------------------------------------------------
def cmd_fsck(args: argparse.Namespace) -> int:
    """Every entry's bytes present and intact; orphans and stale temp files listed (removed with --repair)."""
    import json

    from xds_node.repository.fsck import fsck

    node = _node(args)
    try:
        grace = node.settings.store_grace_seconds if args.grace is None else args.grace
        report = fsck(node.repository, grace_seconds=grace, repair=args.repair)
    finally:
        node.close()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


def _seconds(value: str) -> float:
    seconds = float(value)
    if seconds < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return seconds


def add_parsers(sub) -> None:
    """Register the admin subcommands on the ``xds-node`` parser."""

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", type=Path)
        p.add_argument("--init", action="store_true", help="create the data directory if it does not exist")
        return p

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys_command", required=True)
    p = common(keys.add_parser("init", help="demo keys for this node and a demo partner, and partners.toml"))
    p.add_argument("--force", action="store_true", help="replace existing keys and partners file")
    p.set_defaults(func=cmd_keys_init)

    partners = sub.add_parser("partners", help="trusted partner communities").add_subparsers(
        dest="partners_command", required=True)
    p = common(partners.add_parser("list"))
    p.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    p.set_defaults(func=cmd_partners_list)
    for verb, func, text in (("add", cmd_partners_add, "pin a partner's certificate for its member communities"),
                             ("replace", cmd_partners_replace, "change a partner (certificates, communities, ...)")):
        p = common(partners.add_parser(verb, help=text))
        p.add_argument("name", nargs="?", metavar="NAME")
        p.add_argument("--name", dest="name_opt", help=argparse.SUPPRESS)  # the older spelling
        p.add_argument("--cert", action="append", required=True, help="PEM signing certificate to pin (repeatable)")
        p.add_argument("--community", action="append", metavar="OID",
                       help="member homeCommunityId, urn:oid:... (repeatable; the first is the partner's own)")
        p.add_argument("--home-community-id", help=argparse.SUPPRESS)  # the older spelling of --community
        p.add_argument("--issuer", action="append", metavar="NAME",
                       help="SAML Issuer accepted besides the certificate's subject DN (repeatable)")
        p.add_argument("--endpoint", action="append", default=[], help="NAME=URL, e.g. xca_query=https://...")
        p.add_argument("--allow-sha1", action="store_true")
        p.add_argument("--batch-size", type=int)
        p.add_argument("--timeout", type=float)
        p.add_argument("--proxy", metavar="URL", help="forward proxy for calls to this partner "
                       "(http://[user:password@]host:port), or 'direct' for none whatever HTTPS_PROXY says")
        p.set_defaults(func=func)
    p = common(partners.add_parser("remove", help="stop trusting a partner"))
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_partners_remove)
    p = common(partners.add_parser("check", help="certificates in date, endpoints reachable"))
    p.add_argument("--offline", action="store_true")
    p.add_argument("--signed", action="store_true", help="also make a real signed ITI-38 (probe patient) to each")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_partners_check)

    clients = sub.add_parser("clients", help="internal clients (our EHR, sources, consumers): clients.toml"
                             ).add_subparsers(dest="clients_command", required=True)
    p = common(clients.add_parser("list"))
    p.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    p.set_defaults(func=cmd_clients)
    p = common(clients.add_parser("add", help="pin a client's certificate(s) (TLS client or SAML signer)"))
    p.add_argument("name")
    p.add_argument("--cert", action="append", required=True, help="PEM certificate to pin (repeatable)")
    p.set_defaults(func=cmd_clients)
    p = common(clients.add_parser("remove"))
    p.add_argument("name")
    p.set_defaults(func=cmd_clients)

    p = common(sub.add_parser("consent", help="patient opt-in / revocation"))
    p.add_argument("action", choices=["grant", "revoke", "show"])
    p.add_argument("patient", help="patient id as registered, a CX: 'VET0001^^^&1.2.3&ISO'")
    p.add_argument("--source", default="in person", help="paper form, online, in person, ...")
    p.add_argument("--start", help="effective from (ISO 8601; default now)")
    p.add_argument("--until", help="effective until (ISO 8601)")
    p.add_argument("--by", default="", help="who recorded it")
    p.add_argument("--note", default="")
    p.add_argument("--force", action="store_true", help="no warning when the patient is not in the patient index")
    p.add_argument("--json", action="store_true", help="print the state and directives as JSON")
    p.set_defaults(func=cmd_consent)

    p = common(sub.add_parser("audit", help="list or export audit events; accounting of disclosures"))
    p.add_argument("--patient")
    p.add_argument("--partner")
    p.add_argument("--transaction")
    p.add_argument("--outcome")
    p.add_argument("--since")
    p.add_argument("--until")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--accounting", metavar="PATIENT", help="accounting of disclosures for one patient")
    p.set_defaults(func=cmd_audit)

    p = common(sub.add_parser("fsck", help="check the document store against the repository index"))
    p.add_argument("--repair", action="store_true",
                   help="remove orphan content files and stale temp files past the grace period")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--grace", type=_seconds, metavar="SECONDS",
                   help="age before a temp file or orphan counts as abandoned (default: store_grace_seconds)")
    p.set_defaults(func=cmd_fsck)

    p = common(sub.add_parser("patients", help="the XCPD patient index (versions, discrepancies)"))
    p.add_argument("action", choices=["add", "import", "list", "show", "discrepancies"])
    p.add_argument("patient", nargs="?", help="patient id (add, show)")
    p.add_argument("files", nargs="*", type=Path, help="CSV or JSON-lines files (import)")
    p.add_argument("--family")
    p.add_argument("--given", action="append")
    p.add_argument("--gender", choices=["M", "F", "UN"])
    p.add_argument("--birth-date", help="YYYYMMDD")
    p.add_argument("--street")
    p.add_argument("--city")
    p.add_argument("--state")
    p.add_argument("--postal-code")
    p.add_argument("--phone")
    p.add_argument("--root", help="assigning authority OID for bare ids in imported files")
    p.add_argument("--by", default="", help="who makes the change (add, import; default: the OS user)")
    p.add_argument("--json", action="store_true", help="list, show, discrepancies: machine-readable output")
    p.add_argument("--limit", type=int, help="list (default all), discrepancies (default 200, newest first): how many")
    p.set_defaults(func=cmd_patients)
