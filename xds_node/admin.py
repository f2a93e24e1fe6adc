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
    table = Table("name", "communities", "certificate (SHA-256)", "expires", "endpoints", "options")
    for p in TrustStore.load(settings.partners_path).partners():
        for i, cert in enumerate(p.certificates or [None]):
            fp = cert.fingerprint(_sha256()).hex()[:23] + "…" if cert is not None else "-"
            expires = cert.not_valid_after_utc.date().isoformat() if cert is not None else "-"
            opts = ", ".join(f"{k}={v}" for k, v in (("sha1", p.allow_sha1), ("batch", p.retrieve_batch_size),
                                                      ("timeout", p.timeout)))
            table.add_row(p.name if i == 0 else "", "\n".join(p.communities) if i == 0 else "", fp, expires,
                          "\n".join(f"{k}: {u}" for k, u in p.endpoints.items()) if i == 0 else "", opts)
    Console().print(table)
    return 0


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
    from xds_node.security.trust import Partner, valid_hcid

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

    return Partner(name=name, communities=communities, certificates=_read_certs(args.cert),
                   issuers=list(args.issuer or []) or (list(old.issuers) if old is not None else []),
                   endpoints=endpoints or (dict(old.endpoints) if old is not None else {}),
                   allow_sha1=bool(args.allow_sha1) or (old.allow_sha1 if old is not None else False),
                   retrieve_batch_size=pick(args.batch_size, "retrieve_batch_size", 50),
                   timeout=pick(args.timeout, "timeout", 30.0),
                   options=dict(old.options) if old is not None else {})


def _edit_partners(args: argparse.Namespace, change) -> int:
    """Read-modify-write partners.toml under a lock; a running node picks the change up by itself."""
    from xds_node.security.filewatch import edit_lock, record_last_good
    from xds_node.security.trust import TrustStore

    settings = _settings(args)
    path = settings.partners_path
    try:
        with edit_lock(path):
            try:
                store = TrustStore.load(path) if path.exists() else TrustStore()
            except (OSError, ValueError) as exc:
                raise _CliError(f"partners file {path} is not valid: {exc}") from None
            message = change(store)
            store.save(path)
            record_last_good(path, path.read_bytes())
    except _CliError as exc:
        print(f"xds-node partners: {exc}", file=sys.stderr)
        return 2
    print(f"{message} in {path}")
    return 0


def cmd_partners_add(args: argparse.Namespace) -> int:
    from xds_node.security.trust import PartnerConflict

    def change(store) -> str:
        partner = _partner_from_args(args)
        if store.partner(partner.name) is not None:
            raise _CliError(f"partner {partner.name!r} already exists; use `xds-node partners replace "
                            f"{partner.name} ...` to change it")
        try:
            store.add(partner)
        except PartnerConflict as exc:
            raise _CliError(f"{exc}; use `xds-node partners replace {exc.existing} ...` to change that "
                            "partner") from None
        return f"added {partner.name} ({', '.join(partner.communities)})"

    return _edit_partners(args, change)


def cmd_partners_replace(args: argparse.Namespace) -> int:
    from xds_node.security.trust import PartnerConflict

    def change(store) -> str:
        name = args.name or args.name_opt
        old = store.partner(name or "")
        if old is None:
            raise _CliError(f"no partner named {name!r}; use `xds-node partners add` to add one")
        partner = _partner_from_args(args, old)
        try:
            store.replace(partner)
        except PartnerConflict as exc:
            raise _CliError(str(exc)) from None
        return f"replaced {partner.name} ({', '.join(partner.communities)})"

    return _edit_partners(args, change)


def cmd_partners_remove(args: argparse.Namespace) -> int:
    def change(store) -> str:
        if store.partner(args.name) is None:
            raise _CliError(f"no partner named {args.name!r}")
        store.remove(args.name)
        return f"removed {args.name}"

    return _edit_partners(args, change)


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
    from xds_node.security.consent import format_history

    node = _node(args)
    try:
        store = node.consent_store
        if args.action == "grant":
            store.grant(args.patient, source=args.source, effective_from=_when(args.start),
                        effective_until=_when(args.until), recorded_by=args.by, note=args.note)
        elif args.action == "revoke":
            store.revoke(args.patient, source=args.source, effective_from=_when(args.start),
                         recorded_by=args.by, note=args.note)
        status = store.status(args.patient)
        print(f"{args.patient}: {status.state} (mode {node.settings.consent_mode})")
        if args.action == "show":
            print(format_history(store.history(args.patient)))
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
        p.set_defaults(func=func)
    p = common(partners.add_parser("remove", help="stop trusting a partner"))
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_partners_remove)
    p = common(partners.add_parser("check", help="certificates in date, endpoints reachable"))
    p.add_argument("--offline", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_partners_check)

    p = common(sub.add_parser("consent", help="patient opt-in / revocation"))
    p.add_argument("action", choices=["grant", "revoke", "show"])
    p.add_argument("patient", help="patient id as registered, e.g. 'VET0001^^^&1.2.3&ISO'")
    p.add_argument("--source", default="in person", help="paper form, online, in person, ...")
    p.add_argument("--start", help="effective from (ISO 8601; default now)")
    p.add_argument("--until", help="effective until (ISO 8601)")
    p.add_argument("--by", default="", help="who recorded it")
    p.add_argument("--note", default="")
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
