"""``xds-node patients`` in process: import takes every file it is given, add refuses bad input,
show and discrepancies escape what documents bring."""

from __future__ import annotations

import json

import pytest

from xds_node.cli import main

ROOT = "1.3.6.1.4.1.21367.2026.1.9"
PID = f"P1^^^&{ROOT}&ISO"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    for name in ("XDS_DATABASE_URL", "XDS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    node = tmp_path / "node"
    node.mkdir()  # admin commands act on an existing node's directory
    return node


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["patients", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_import_takes_its_first_file_too(data_dir, tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("patient_id,family,given,gender,birth_date\nP1,Moore,Chip,M,19840711\n")
    b.write_text("patient_id,family,given,gender,birth_date\nP2,Lee,Ann,F,19840712\n")
    code, out, _ = run(capsys, "import", str(a), str(b), "--root", ROOT, "--by", "alice", "--data-dir", str(data_dir))
    assert code == 0 and out.count("'created': 1") == 2
    code, out, _ = run(capsys, "show", PID, "--json", "--data-dir", str(data_dir))
    report = json.loads(out)
    assert report["current"]["demographics"]["family"] == "Moore"
    assert [(v["version"], v["source"], v["actor"]) for v in report["versions"]] == [(1, "a.csv", "alice")]
    code, _, err = run(capsys, "import", str(tmp_path / "missing.csv"), "--data-dir", str(data_dir))
    assert code == 1 and "missing.csv" in err


def test_add_corrects_only_the_named_fields_and_refuses_bad_input(data_dir, capsys):
    d = str(data_dir)
    assert run(capsys, "add", PID, "--family", "Moore", "--given", "Chip", "--gender", "M",
               "--birth-date", "1984-07-11", "--by", "alice", "--data-dir", d)[:2] == \
        (0, f"created {PID} (version 1)\n")
    assert run(capsys, "add", PID, "--family", "Moore-Lee", "--by", "bob", "--data-dir", d)[:2] == \
        (0, f"updated {PID} (version 2)\n")
    report = json.loads(run(capsys, "show", PID, "--json", "--data-dir", d)[1])
    demo = report["current"]["demographics"]
    assert (demo["family"], demo["given"], demo["gender"], demo["birth_date"]) == ("Moore-Lee", ["Chip"], "M",
                                                                                   "19840711")
    assert [v["actor"] for v in report["versions"]] == ["bob", "alice"]
    code, _, err = run(capsys, "add", PID, "--birth-date", "11/07/1984", "--data-dir", d)
    assert code == 2 and "YYYYMMDD" in err
    code, _, err = run(capsys, "add", "P1", "--family", "X", "--data-dir", d)
    assert code == 2 and "ext^^^&root&ISO" in err
    assert json.loads(run(capsys, "show", PID, "--json", "--data-dir", d)[1])["current"]["version"] == 2
    code, _, err = run(capsys, "show", f"NOBODY^^^&{ROOT}&ISO", "--data-dir", d)
    assert code == 1 and "not in the patient index" in err


def test_discrepancies_are_listed_and_escaped(data_dir, capsys):
    from xds_node.config import load_settings
    from xds_node.node import Node

    d = str(data_dir)
    run(capsys, "add", PID, "--family", "Moore", "--given", "Chip", "--gender", "M", "--birth-date", "19840711",
        "--data-dir", d)
    assert run(capsys, "discrepancies", "--data-dir", d)[1].startswith("no document has contradicted")
    node = Node(load_settings(env={}, data_dir=data_dir))
    try:
        doc = f"""<ClinicalDocument xmlns="urn:hl7-org:v3"><recordTarget><patientRole>
          <id root="{ROOT}" extension="P1"/><patient><name><given>Chip</given>
          <family>Evil&#x1b;[2J&#x85;line</family></name></patient></patientRole></recordTarget>
          </ClinicalDocument>"""
        # XML 1.0 forbids U+001B even as a reference: the reader refuses the document outright
        with pytest.raises(ValueError):
            node.patients.add_from_cda(doc.encode())
        node.patients.add_from_cda(doc.replace("&#x1b;", "&#x9b;").encode(), document_unique_id="1.2.3^X")
    finally:
        node.close()
    code, out, _ = run(capsys, "discrepancies", "--data-dir", d)
    assert code == 0 and PID in out and "'Evil\\x9b[2J line'" in out and "\x9b" not in out
    rows = json.loads(run(capsys, "discrepancies", "--json", "--data-dir", d)[1])
    assert [(r["patient_id"], r["field"], r["document_unique_id"]) for r in rows] == [(PID, "family", "1.2.3^X")]
