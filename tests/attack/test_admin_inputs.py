"""Admin commands given hostile text: consent ids with control characters are refused (they match
no registry id, and would forge lines in `consent show`), and the audit trail's CSV and text outputs
stay one row per event whatever a signed claim contains."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest

from tests.conftest import ROOT

VET = "VET0001^^^&1.3.6.1.4.1.21367.2026.1.9&ISO"


def _cli(*args: str, data) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xds_node.cli", *args, "--data-dir", str(data)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("pid", ["VET\n0001^^^&1.3.6.1.4.1.21367.2026.1.9&ISO",
                                 "VET0001\x1b[2J^^^&1.3.6.1.4.1.21367.2026.1.9&ISO",
                                 "VET\u202e1000^^^&1.3.6.1.4.1.21367.2026.1.9&ISO"])
def test_consent_refuses_ids_with_control_characters(pid):
    from xds_node.security.consent import check_patient_id

    with pytest.raises(ValueError, match="control characters"):
        check_patient_id(pid)
    assert check_patient_id(f"  {VET}\n") == VET  # surrounding blanks are still trimmed


def test_consent_cli_is_a_clean_error(tmp_path):
    done = _cli("consent", "revoke", "VET\n0001^^^&1.3.6.1.4.1.21367.2026.1.9&ISO", "--source", "paper form",
                data=tmp_path)
    assert done.returncode == 2 and "control characters" in done.stderr and "Traceback" not in done.stderr


def test_audit_outputs_keep_hostile_claims_in_their_cells(tmp_path):
    from xds_node.audit.events import AuditEvent
    from xds_node.audit.store import AuditLog, export, format_accounting
    from xds_node.config import load_settings
    from xds_node.db import make_engine
    from xds_node.node import Node

    Node(load_settings(env={}, data_dir=tmp_path)).close()  # schema
    engine = make_engine(load_settings(env={}, data_dir=tmp_path).db_url)
    hostile = ["=HYPERLINK(\"http://x\")", "+1", "-1", "@SUM(A1)", "\tx", "\r\n=1", "a\nb", "a\rb",
               "\x1b[2Jx", "\x9b2Jx", "x\u2028y", "\u202eevil", "ok\"quote", " =1"]
    log = AuditLog(engine)
    for i, h in enumerate(hostile):
        log.record(AuditEvent(transaction="ITI-38", outcome="success", partner_organization=h, user_subject_id=h,
                              patient_id=VET, document_ids=[h, f"doc{i}"], message_id=h, reason=h,
                              partner_community=h, purpose_of_use=h, caller_kind="partner", partner=h))
    out = io.StringIO()
    export(log.list(), "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == len(hostile)
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r", "\n")), cell
    text = format_accounting(log.accounting_of_disclosures(VET), patient_id=VET)
    lines = text.splitlines()
    assert len(lines) == 3 + len(hostile) + 1  # title, header, rule, one per event, total
    assert not any(ch in text for ch in "\x1b\x9b\u2028\u202e\r")
    engine.dispose()
    done = _cli("audit", data=tmp_path)
    assert done.returncode == 0 and not any(ch in done.stdout for ch in "\x1b\x9b\u2028\u202e\r")


def test_a_clients_certificate_cannot_also_be_pinned_for_a_partner(tmp_path, capsys):
    """`clients add` refused a partner's certificate, but `partners add|replace` took a client's: the
    certificate was then both, against the trust model's rule (and the client was locked out)."""
    from xds_node.cli import main
    from xds_node.security.keys import generate_demo_keys
    from xds_node.security.trust import TrustStore

    data = str(tmp_path / "node")
    _key, cert = generate_demo_keys(tmp_path / "ehr", common_name="Boston EHR")
    _pkey, pcert = generate_demo_keys(tmp_path / "partner", common_name="Some HIE")
    assert main(["clients", "add", "ehr", "--cert", str(cert), "--data-dir", data]) == 0
    assert main(["partners", "add", "sneaky", "--cert", str(cert), "--community", "urn:oid:1.2.3.4",
                 "--data-dir", data]) == 2
    assert "internal client 'ehr'" in capsys.readouterr().err
    assert main(["partners", "add", "hie", "--cert", str(pcert), "--community", "urn:oid:1.2.3.5",
                 "--data-dir", data]) == 0
    assert main(["partners", "replace", "hie", "--cert", str(cert), "--data-dir", data]) == 2
    store = TrustStore.load(tmp_path / "node" / "partners.toml")
    assert [p.name for p in store.partners()] == ["hie"]
    from cryptography import x509

    from xds_node.security.trust import fingerprint

    assert [fingerprint(c) for c in store.partner("hie").certificates] == [
        fingerprint(x509.load_pem_x509_certificate(pcert.read_bytes()))]  # unchanged by the refused replace
