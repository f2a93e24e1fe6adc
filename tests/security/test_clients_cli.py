"""`xds-node clients add|list|remove`: clients.toml beside partners.toml, one-line errors, no traceback."""

from __future__ import annotations

import pytest

from xds_node.admin import init_keys
from xds_node.cli import main
from xds_node.config import load_settings
from xds_node.security.clients import ClientDirectory, ClientStore
from xds_node.security.keys import generate_demo_keys


@pytest.fixture
def data(tmp_path):
    init_keys(load_settings(env={}, data_dir=tmp_path))
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_add_list_remove(data, capsys, tmp_path_factory):
    _key, cert = generate_demo_keys(tmp_path_factory.mktemp("c"), common_name="Boston EHR")
    code, out, _ = run(capsys, "clients", "add", "ehr", "--cert", str(cert), "--data-dir", str(data))
    assert code == 0 and "added ehr" in out
    assert (data / "clients.toml").exists()
    store = ClientStore.load(data / "clients.toml", "urn:oid:1.2.3")
    assert [c.name for c in store.partners()] == ["ehr"]
    code, out, _ = run(capsys, "clients", "list", "--data-dir", str(data))
    assert code == 0 and "ehr" in out and "CN=Boston EHR" in out
    code, out, _ = run(capsys, "clients", "remove", "ehr", "--data-dir", str(data))
    assert code == 0 and ClientStore.load(data / "clients.toml", "urn:oid:1.2.3").partners() == []


@pytest.mark.parametrize("case", ["duplicate-cert", "partner-cert", "missing-file", "not-a-cert", "unknown-name",
                                  "broken-file"])
def test_errors_are_one_line(data, capsys, tmp_path_factory, case):
    _key, cert = generate_demo_keys(tmp_path_factory.mktemp("c"), common_name="Boston EHR")
    assert run(capsys, "clients", "add", "ehr", "--cert", str(cert), "--data-dir", str(data))[0] == 0
    junk = data / "junk.pem"
    junk.write_text("hello", encoding="utf-8")
    argv = {
        "duplicate-cert": ["add", "ehr2", "--cert", str(cert)],
        "partner-cert": ["add", "sneaky", "--cert", str(data / "keys" / "demo-partner.cert.pem")],
        "missing-file": ["add", "x", "--cert", str(data / "nope.pem")],
        "not-a-cert": ["add", "x", "--cert", str(junk)],
        "unknown-name": ["remove", "nobody"],
        "broken-file": ["list"],
    }[case]
    if case == "broken-file":
        (data / "clients.toml").write_text("[[client]\nname=", encoding="utf-8")
    before = (data / "clients.toml").read_bytes()
    code, _out, err = run(capsys, "clients", *argv, "--data-dir", str(data))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("clients ")
    assert (data / "clients.toml").read_bytes() == before  # nothing half-written


def test_directory_reloads_on_change_and_fails_closed(tmp_path, tmp_path_factory):
    _key, cert = generate_demo_keys(tmp_path_factory.mktemp("c"), common_name="EHR")
    path = tmp_path / "clients.toml"
    directory = ClientDirectory(path, "urn:oid:1.2.3")
    assert directory.partners() == []
    store = ClientStore("urn:oid:1.2.3")
    store.add("ehr", [cert.read_bytes()])
    store.save(path)
    (client,) = directory.partners()
    assert directory.partner_for_certificate(cert.read_bytes()) is client
    path.write_text("not = [valid", encoding="utf-8")
    assert directory.partners() == [] and directory.partner_for_certificate(cert.read_bytes()) is None
    path.unlink()
    assert directory.partners() == []
