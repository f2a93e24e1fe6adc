"""Administration commands: keys, partners, consent, audit, patients.

Each command opens the node's database (from the same settings ``serve`` uses) and calls the
stores directly; none needs a running node.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from xds_node.config import Settings, load_settings

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

    return Node(_settings(args))


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    dt = datetime.fromisoformat(value)
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
    table = Table("name", "homeCommunityId", "certificate (SHA-256)", "expires", "endpoints", "options")
    for p in TrustStore.load(settings.partners_path).partners():
        for i, cert in enumerate(p.certificates or [None]):
            fp = cert.fingerprint(_sha256()).hex()[:23] + "…" if cert is not None else "-"
            expires = cert.not_valid_after_utc.date().isoformat() if cert is not None else "-"
            opts = ", ".join(f"{k}={v}" for k, v in (("sha1", p.allow_sha1), ("batch", p.retrieve_batch_size),
                                                      ("timeout", p.timeout)))
            table.add_row(p.name if i == 0 else "", p.home_community_id if i == 0 else "", fp, expires,
                          "\n".join(f"{k}: {u}" for k, u in p.endpoints.items()) if i == 0 else "", opts)
    Console().print(table)
    return 0


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def cmd_partners_add(args: argparse.Namespace) -> int:
    from cryptography import x509

    from xds_node.security.trust import Partner, TrustStore

    settings = _settings(args)
    store = TrustStore.load(settings.partners_path) if settings.partners_path.exists() else TrustStore()
    certs = [x509.load_pem_x509_certificate(Path(c).read_bytes()) for c in args.cert]
    endpoints = dict(e.split("=", 1) for e in args.endpoint)
    store.add(Partner(name=args.name, home_community_id=args.home_community_id, certificates=certs,
                      endpoints=endpoints, allow_sha1=args.allow_sha1, retrieve_batch_size=args.batch_size,
                      timeout=args.timeout))
    store.save(settings.partners_path)
    print(f"added {args.name} to {settings.partners_path}")
    return 0


def cmd_partners_check(args: argparse.Namespace) -> int:
    """Validate the partners file: certificates in date, endpoints answer their WSDL."""
    import httpx

    from xds_node.security.trust import TrustStore

    settings = _settings(args)
    try:
        store = TrustStore.load(settings.partners_path)
    except (OSError, ValueError) as exc:
        print(f"partners file {settings.partners_path}: {exc}", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    problems = 0
    for p in store.partners():
        for cert in p.certificates:
            if not (cert.not_valid_before_utc <= now < cert.not_valid_after_utc):
                print(f"{p.name}: certificate {cert.subject.rfc4514_string()} is not valid now")
                problems += 1
        for name, url in p.endpoints.items():
            if args.offline:
                continue
            try:
                code = httpx.get(url + "?wsdl", timeout=args.timeout).status_code
                state = "ok" if code == 200 else f"HTTP {code}"
            except httpx.HTTPError as exc:
                state = f"unreachable ({type(exc).__name__})"
            if state != "ok":
                problems += 1
            print(f"{p.name}: {name} {url}: {state}")
    print(f"{len(store.partners())} partner(s), {problems} problem(s)")
    return 1 if problems else 0


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
        print(f"{patient}: {status.state} (mode {node.settings.consent_mode})")
        if args.action == "show":
            print(format_history(store.history(patient)))
    finally:
        node.close()
    return 0


# --- audit --------------------------------------------------------------------------------------
def cmd_audit(args: argparse.Namespace) -> int:
    from xds_node.audit.store import export, format_accounting

    node = _node(args)
    try:
        if args.accounting:
            rows = node.audit.accounting_of_disclosures(args.accounting, _when(args.since))
            print(format_accounting(rows, patient_id=args.accounting))
            return 0
        events = node.audit.list(since=_when(args.since), until=_when(args.until), patient_id=args.patient,
                                 partner=args.partner, transaction=args.transaction, outcome=args.outcome,
                                 limit=args.limit)
        if args.format in ("json", "csv"):
            export(events, args.format, sys.stdout)
            return 0
        table = Table("time (UTC)", "transaction", "outcome", "partner", "user", "purpose", "patient", "documents",
                      "reason")
        for e in events:
            table.add_row(e.time.strftime("%Y-%m-%d %H:%M:%S"), e.transaction, e.outcome,
                          e.partner_organization or e.partner_community, e.user_subject_id, e.purpose_of_use,
                          e.patient_id or "", str(len(e.document_ids)) if e.document_ids else "", e.reason)
        Console().print(table)
    finally:
        node.close()
    return 0


# --- patients -----------------------------------------------------------------------------------
def cmd_patients(args: argparse.Namespace) -> int:
    from xds_node.patients.model import Address, Demographics, Patient

    node = _node(args)
    try:
        if args.action == "add":
            demo = Demographics(given=args.given or [], family=args.family, gender=args.gender,
                                birth_date=args.birth_date,
                                addresses=[Address(street=[args.street] if args.street else [], city=args.city,
                                                   state=args.state, postal_code=args.postal_code)]
                                if (args.street or args.city or args.postal_code) else [],
                                telecoms=[f"tel:{args.phone}"] if args.phone else [])
            print(node.patients.add(Patient(args.patient, demo, "cli")), args.patient)
        elif args.action == "import":
            for path in args.files:
                print(path, node.patients.import_file(path, default_root=args.root))
        elif args.action == "show":
            patient = node.patients.get(args.patient)
            if patient is None:
                print(f"{args.patient}: not in the patient index", file=sys.stderr)
                return 1
            for key, value in patient.demographics.to_dict().items():
                print(f"{key:20} {value}")
    finally:
        node.close()
    return 0


def add_parsers(sub) -> None:
    """Register the admin subcommands on the ``xds-node`` parser."""

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", type=Path)
        return p

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys_command", required=True)
    p = common(keys.add_parser("init", help="demo keys for this node and a demo partner, and partners.toml"))
    p.add_argument("--force", action="store_true", help="replace existing keys and partners file")
    p.set_defaults(func=cmd_keys_init)

    partners = sub.add_parser("partners", help="trusted partner communities").add_subparsers(
        dest="partners_command", required=True)
    common(partners.add_parser("list")).set_defaults(func=cmd_partners_list)
    p = common(partners.add_parser("add"))
    p.add_argument("--name", required=True)
    p.add_argument("--home-community-id", required=True)
    p.add_argument("--cert", action="append", required=True, help="PEM signing certificate to pin (repeatable)")
    p.add_argument("--endpoint", action="append", default=[], help="NAME=URL, e.g. xca_query=https://...")
    p.add_argument("--allow-sha1", action="store_true")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_partners_add)
    p = common(partners.add_parser("check", help="certificates in date, endpoints reachable"))
    p.add_argument("--offline", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_partners_check)

    p = common(sub.add_parser("consent", help="patient opt-in / revocation"))
    p.add_argument("action", choices=["grant", "revoke", "show"])
    p.add_argument("patient", help="patient id as registered, a CX: 'VET0001^^^&1.2.3&ISO'")
    p.add_argument("--source", default="in person", help="paper form, online, in person, ...")
    p.add_argument("--start", help="effective from (ISO 8601; default now)")
    p.add_argument("--until", help="effective until (ISO 8601)")
    p.add_argument("--by", default="", help="who recorded it")
    p.add_argument("--note", default="")
    p.add_argument("--force", action="store_true", help="no warning when the patient is not in the patient index")
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
    p.add_argument("--accounting", metavar="PATIENT", help="accounting of disclosures for one patient")
    p.set_defaults(func=cmd_audit)

    p = common(sub.add_parser("patients", help="the XCPD patient index"))
    p.add_argument("action", choices=["add", "import", "show"])
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
    p.set_defaults(func=cmd_patients)
