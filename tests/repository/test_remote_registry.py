"""A repository whose registry is another node: ITI-41 registers through ITI-42 over SOAP."""

from __future__ import annotations

import pytest

from tests import factories as f
from tests.repository.test_provide_and_retrieve import documents_of, no_hash_size, provide, retrieve, stored_files
from tests.soapkit import SoapTestClient
from xds_node.config import load_settings
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery

pytestmark = pytest.mark.server


@pytest.fixture
def repository_node(tmp_path, live_node):
    from xds_node.node import Node

    node = Node(load_settings(env={}, data_dir=tmp_path, registry_url=live_node.url + "/xds/registry"))
    client = SoapTestClient(app=node.app())
    yield node, client
    client.close()
    node.close()


def test_provide_and_register_through_a_remote_registry(repository_node, live_client):
    node, client = repository_node
    pid = f.patient(700)
    sub = no_hash_size(f.submission(pid, 1, uuids=False))  # symbolic ids: the repository assigns them
    reply = provide(client, sub, {sub.documents[0].id: b"remote-registered bytes"})
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:800]
    q = StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
        "$XDSDocumentEntryPatientId": [[f"'{pid}'"]], "$XDSDocumentEntryStatus": [["('Approved')"]]})
    found = live_client.call("/xds/registry", v.Action.ITI18, rim.write_adhoc_query_request(q))
    (entry,) = found.objects("ExtrinsicObject")
    assert node.settings.repository_unique_id in etree_text(entry)
    assert node.registry_store.count("doc") == 0  # nothing in the local registry
    uid = sub.documents[0].unique_id
    assert documents_of(retrieve(client, [(None, uid)])) == {uid: b"remote-registered bytes"}
    assert node.repository.row_for_uid(uid)["entry_uuid"] == entry.get("id")


def test_remote_rejection_leaves_no_bytes(repository_node):
    node, client = repository_node
    sub = no_hash_size(f.submission(f.patient(701), 1))
    sub.submission_set.patient_id = f.patient(702)  # the remote registry says XDSPatientIdDoesNotMatch
    reply = provide(client, sub, {sub.documents[0].id: b"never kept"})
    assert v.ErrorCode.PATIENT_ID_DOES_NOT_MATCH in reply.error_codes
    assert stored_files(node) == [] and node.repository.row_for_uid(sub.documents[0].unique_id) is None


def test_unreachable_registry_is_a_registry_error(tmp_path):
    from tests.conftest import free_port
    from xds_node.node import Node

    node = Node(load_settings(env={}, data_dir=tmp_path,
                              registry_url=f"http://127.0.0.1:{free_port()}/xds/registry"))
    client = SoapTestClient(app=node.app())
    try:
        sub = no_hash_size(f.submission(f.patient(703), 1))
        reply = provide(client, sub, {sub.documents[0].id: b"nowhere to go"})
        assert reply.status == v.ResponseStatus.FAILURE and reply.error_codes == [v.ErrorCode.REGISTRY_ERROR]
        assert stored_files(node) == []
    finally:
        client.close()
        node.close()


def etree_text(el) -> str:
    from lxml import etree

    return etree.tostring(el).decode()
