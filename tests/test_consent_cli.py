"""`xds-node consent grant|revoke|show`: ids must be CX (a bare id protects nobody), a patient the
index does not know is warned about, and what is recorded is what the node enforces."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, _database_url
from xds_node.cli import main
from xds_node.db import make_engine
from xds_node.security.consent import ConsentStore

KNOWN = "VET0002^^^&2.16.840.1.113883.4.349&ISO"
UNKNOWN = "VET0999^^^&2.16.840.1.113883.4.349&ISO"


@pytest.fixture
def data(tmp_path, backend, monkeypatch):
    """A data directory whose patient index knows KNOWN; XDS_DATABASE_URL names its database."""
    url = _database_url(backend, tmp_path)
    monkeypatch.setenv("XDS_DATABASE_URL", url)
    assert main(["patients", "add", KNOWN, "--family", "Sample", "--given", "Jordan", "--gender", "F",
                 "--birth-date", "19800101", "--data-dir", str(tmp_path)]) == 0
    return tmp_path


def history(patient: str) -> list:
    engine = make_engine(os.environ["XDS_DATABASE_URL"])
    try:
        return ConsentStore(engine).history(patient)
    finally:
        engine.dispose()


def test_a_bare_id_is_refused_with_one_line_and_exit_code_2(data):
    for action in ("grant", "revoke"):
        done = subprocess.run([sys.executable, "-m", "xds_node.cli", "consent", action, "VET0002",
                               "--data-dir", str(data)], cwd=ROOT, env={**os.environ}, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "not in CX form ID^^^&OID&ISO" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
    assert history("VET0002") == []


@pytest.mark.parametrize("bad", ["VET0002^^^&2.16.840.1.113883.4.349", "VET0002^^^2.16.840.1.113883.4.349&ISO",
                                 "^^^&2.16.840.1.113883.4.349&ISO", "VET0002^^^&VA&ISO"])
def test_other_malformed_ids_are_refused(data, capsys, bad):
    assert main(["consent", "grant", bad, "--data-dir", str(data)]) == 2
    assert "not in CX form" in capsys.readouterr().err
    assert history(bad) == []


def test_bad_dates_are_a_clean_error(data, capsys):
    assert main(["consent", "grant", KNOWN, "--start", "next tuesday", "--data-dir", str(data)]) == 2
    assert main(["consent", "grant", KNOWN, "--start", "2030-01-02", "--until", "2030-01-01",
                 "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "is not a time" in err and "effective_until must be after effective_from" in err
    assert history(KNOWN) == []


def test_a_patient_missing_from_the_index_is_warned_about_unless_forced(data, capsys):
    assert main(["consent", "grant", UNKNOWN, "--data-dir", str(data)]) == 0
    out = capsys.readouterr()
    assert f"warning: {UNKNOWN} is not in the patient index" in out.err and "--force" in out.err
    assert out.out.startswith(f"{UNKNOWN}: granted")
    assert main(["consent", "revoke", UNKNOWN, "--force", "--data-dir", str(data)]) == 0
    out = capsys.readouterr()
    assert out.err == "" and out.out.startswith(f"{UNKNOWN}: revoked")
    assert [d.kind for d in history(UNKNOWN)] == ["opt-in", "revoke"]
    # a patient the index knows needs no warning
    assert main(["consent", "grant", KNOWN, "--source", "paper form", "--data-dir", str(data)]) == 0
    assert main(["consent", "show", KNOWN, "--data-dir", str(data)]) == 0
    out = capsys.readouterr()
    assert out.err == "" and out.out.splitlines()[-1].startswith(f"patient {KNOWN}: granted")
