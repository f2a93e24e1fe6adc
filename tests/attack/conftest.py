"""Fixtures for the attack tests: a node with demo keys, the sample veterans, one consenting and one
revoked, an internal client pinned, and callers whose TCP peer address the app sees."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import _database_url
from tests.responding.test_responding_gateway import _folder_rows, key_template  # noqa: F401
from tests.responding.test_trust_boundary import InternalClient, pin_client
from xds_node.config import load_settings
from xds_node.security.keys import generate_demo_keys, load_key_and_cert

SAMPLES = Path(__file__).resolve().parents[2] / "sample_documents"


@pytest.fixture(scope="module")
def ehr(tmp_path_factory) -> InternalClient:
    d = tmp_path_factory.mktemp("ehr")
    key_path, cert_path = generate_demo_keys(d, common_name="Boston EHR")
    key, cert = load_key_and_cert(key_path, cert_path)
    return InternalClient("boston-ehr", key, cert, cert_path, key_path)


def make_world(tmp_path: Path, backend: str, key_template: Path, ehr: InternalClient):  # noqa: F811
    """(node, granted patient, revoked patient, {patient: [document uniqueIds]})."""
    from xds_node.node import Node

    shutil.copytree(key_template, tmp_path, dirs_exist_ok=True)
    settings = load_settings(env={}, data_dir=tmp_path, database_url=_database_url(backend, tmp_path))
    pin_client(settings, ehr)
    node = Node(settings)
    node.folder_indexer(SAMPLES).sync()
    owners = node.registry_store.patients_of_documents([r["unique_id"] for r in _folder_rows(node)])
    granted, revoked = sorted(set(owners.values()))[:2]
    node.consent_store.grant(granted, source="paper form")
    node.consent_store.grant(revoked, source="paper form")
    node.consent_store.revoke(revoked, source="paper form")
    docs: dict[str, list[str]] = {}
    for uid, owner in sorted(owners.items()):
        docs.setdefault(owner, []).append(uid)
    return node, granted, revoked, docs


@pytest.fixture
def world(tmp_path, key_template, ehr):  # noqa: F811
    node, granted, revoked, docs = make_world(tmp_path, "sqlite", key_template, ehr)
    yield node, granted, revoked, docs
    node.close()


@pytest.fixture
def world_both(tmp_path, backend, key_template, ehr):  # noqa: F811
    node, granted, revoked, docs = make_world(tmp_path, backend, key_template, ehr)
    yield node, granted, revoked, docs
    node.close()
