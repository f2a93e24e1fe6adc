"""Listing commands for scripts and pipes (issue 11), the CLI in a subprocess (stdout is a pipe):

* ``--json`` on every listing command prints one JSON document;
* tables sent to a pipe are never wrapped or truncated to 80 columns.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[1]
PATIENT = "VET0042-WITH-A-LONG-EXTENSION^^^&2.16.840.1.113883.3.42.10001.100001.12&ISO"
FAMILY = "Featherstonehaugh-Cholmondeley-Marjoribanks"


def _cli(*args: str, data: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run([sys.executable, "-m", "xds_node.cli", *args, "--data-dir", str(data)],
                          capture_output=True, text=True, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          timeout=90)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def _cert(path: Path, name: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("node") / "data"
    _cli("keys", "init", "--init", data=data)
    _cli("clients", "add", "ehr-with-a-rather-long-client-name",
         "--cert", str(_cert(data.parent / "ehr.pem", "ehr.example.org")), data=data)
    _cli("patients", "add", PATIENT, "--family", FAMILY, "--given", "Alexandra", "--gender", "F",
         "--birth-date", "19700101", data=data)
    _cli("consent", "grant", PATIENT, "--source", "paper form", data=data)
    return data


def test_partners_list_json_and_full_width(data):
    partners = json.loads(_cli("partners", "list", "--json", data=data).stdout)
    demo = next(p for p in partners if p["name"] == "demo-partner")
    assert demo["home_community_id"] == "urn:oid:1.3.6.1.4.1.21367.2026.2.1"
    assert len(demo["certificates"][0]["sha256"]) == 64
    table = _cli("partners", "list", data=data).stdout
    assert any("demo-partner" in line and "urn:oid:1.3.6.1.4.1.21367.2026.2.1" in line for line in table.splitlines())


def test_clients_list_json_and_full_width(data):
    clients = json.loads(_cli("clients", "list", "--json", data=data).stdout)
    assert [c["name"] for c in clients] == ["ehr-with-a-rather-long-client-name"]
    assert clients[0]["certificates"][0]["subject"] == "CN=ehr.example.org"
    table = _cli("clients", "list", data=data).stdout
    assert any("ehr-with-a-rather-long-client-name" in line and "CN=ehr.example.org" in line
               for line in table.splitlines())


def test_consent_show_json(data):
    shown = json.loads(_cli("consent", "show", PATIENT, "--json", data=data).stdout)
    assert shown["patient_id"] == PATIENT and shown["state"] == "granted"
    assert [(d["kind"], d["source"]) for d in shown["directives"]] == [("opt-in", "paper form")]


def test_patients_list_json_and_full_width(data):
    rows = json.loads(_cli("patients", "list", "--json", data=data).stdout)
    assert [(r["patient_id"], r["family"], r["gender"], r["birth_date"]) for r in rows] == [
        (PATIENT, FAMILY, "F", "19700101")]
    table = _cli("patients", "list", data=data).stdout
    assert any(PATIENT in line and FAMILY in line and "19700101" in line for line in table.splitlines())


def test_audit_json(data):
    events = json.loads(_cli("audit", "--json", data=data).stdout)
    assert isinstance(events, list)
    table = _cli("audit", data=data).stdout
    assert "time (UTC)" in table and "transaction" in table and "…" not in table
