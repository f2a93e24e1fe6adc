"""Values the storage cannot hold are metadata errors naming the field, never a 500, on both backends.

The bounds come from the table columns (``registry.limits``, ``repository.limits``); the coverage
test below fails when a bounded column has neither a rule nor a stated reason to need none.
"""

from __future__ import annotations

import pytest
from sqlalchemy import BigInteger, Integer, String, func, select

from tests import factories as f
from tests.registry.test_register import register
from tests.repository.test_provide_and_retrieve import no_hash_size, provide, stored_files
from xds_node.db import column_bound
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import Code
from xds_node.ebxml.validation import FIELD_VALUES
from xds_node.registry import limits as registry_limits
from xds_node.registry import tables as rt
from xds_node.repository import limits as repository_limits
from xds_node.repository import tables as pt

META = v.ErrorCode.REGISTRY_METADATA_ERROR
TABLES = [rt.documents, rt.submission_sets, rt.folders, rt.associations, rt.codes, rt.authors,
          rt.reference_ids, rt.patients, pt.documents]


def row_counts(node) -> dict[str, int]:
    """Rows in every registry and repository table: a rejected submission changes none."""
    with node.engine.connect() as conn:
        return {t.name: conn.scalar(select(func.count()).select_from(t)) for t in TABLES}


def _long_class_code(sub):
    sub.documents[0].class_code = Code("C" * 290, "2.16.840.1.113883.6.1")  # 290 + 2 + 21 > 300


def _long_reference_id(sub):
    sub.documents[0].reference_ids = ["R" * 380 + "^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:order"]


def _huge_size(sub):
    sub.documents[0].size = 10**23


def _long_mime_type(sub):
    sub.documents[0].mime_type = "text/" + "x" * 124  # format-valid, 129 characters


CASES = {
    "classCode": (_long_class_code, "LIMIT-length"),
    "referenceIdList": (_long_reference_id, "LIMIT-length"),
    "size": (_huge_size, "LIMIT-range"),
    "mimeType": (_long_mime_type, "LIMIT-length"),
}


@pytest.mark.parametrize("field", sorted(CASES))
def test_iti42_value_out_of_range_is_a_metadata_error_naming_the_field(client, node, field):
    breaker, _ = CASES[field]
    sub = f.submission(f.patient(801), 1)
    breaker(sub)
    before = row_counts(node)
    reply = register(client, sub)
    assert reply.http_status == 200, reply.raw[:500]
    assert reply.status == v.ResponseStatus.FAILURE
    assert reply.error_codes == [META], reply.raw[:800]
    (err,) = reply.body.iter(f"{{{v.RS}}}RegistryError")
    assert f" {field} " in err.get("codeContext"), err.get("codeContext")
    assert row_counts(node) == before


@pytest.mark.parametrize("field", ["classCode", "referenceIdList", "mimeType"])
def test_iti41_value_out_of_range_stores_nothing(client, node, field):
    breaker, _ = CASES[field]
    sub = no_hash_size(f.submission(f.patient(802), 1))
    breaker(sub)
    before = row_counts(node)
    reply = provide(client, sub, {sub.documents[0].id: b"bytes that must not stay"})
    assert reply.http_status == 200 and reply.status == v.ResponseStatus.FAILURE, reply.raw[:500]
    assert reply.error_codes == [META]
    assert f" {field} " in next(reply.body.iter(f"{{{v.RS}}}RegistryError")).get("codeContext")
    assert row_counts(node) == before and stored_files(node) == []


def test_largest_storable_values_are_accepted(client, node):
    """The bounds are the columns' own: a value exactly at the limit is stored, on both backends."""
    sub = f.submission(f.patient(803), 1)
    de = sub.documents[0]
    scheme = "2.16.840.1.113883.6.1"
    de.class_code = Code("C" * (300 - 2 - len(scheme)), scheme)
    de.reference_ids = ["R" * 400]
    de.size = 2**63 - 1
    reply = register(client, sub)
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:800]
    with node.engine.connect() as conn:
        assert conn.scalar(select(rt.documents.c.size)) == 2**63 - 1
        assert conn.scalar(select(func.max(func.length(rt.reference_ids.c.value)))) == 400


def _bounded(table):
    return [c for c in table.columns if isinstance(c.type, String | Integer) and column_bound(c) != (None,) * 3]


@pytest.mark.parametrize("module, tables", [
    (registry_limits, [rt.documents, rt.submission_sets, rt.folders, rt.associations, rt.codes, rt.authors,
                       rt.reference_ids, rt.patients]),
    (repository_limits, [pt.documents]),
])
def test_every_bounded_column_has_a_rule_or_a_reason(module, tables):
    covered = {c for cols in module.COLUMNS.values() for c in cols}
    exempt = set(module.EXEMPT)
    for table in tables:
        for col in _bounded(table):
            assert col in covered or col in exempt, f"{table.name}.{col.name} has no limit rule and no exemption"
    assert not covered & exempt
    assert set(module.COLUMNS) <= set(FIELD_VALUES), "a limit names a field validation cannot read"


def test_limits_follow_the_column_types():
    assert registry_limits.LIMITS[("DocumentEntry", "classCode")].max_length == rt.codes.c.key.type.length
    size = registry_limits.LIMITS[("DocumentEntry", "size")]
    assert isinstance(rt.documents.c.size.type, BigInteger) and size.maximum == 2**63 - 1
    assert column_bound(rt.patients.c.patient_id)[0] == 256


def test_co_located_registry_bounds_cover_the_repository_index():
    """ITI-41 with the co-located registry checks registry bounds only: they must be as tight."""
    for key, repo in repository_limits.LIMITS.items():
        reg = registry_limits.LIMITS[key]
        assert reg.tighter(repo) == reg, key


def test_repository_with_a_remote_registry_checks_its_own_index_bounds(tmp_path):
    """The repository index must hold what a (more lenient) remote registry accepts: checked before sending."""
    from tests.conftest import free_port
    from tests.soapkit import SoapTestClient
    from xds_node.config import load_settings
    from xds_node.node import Node

    node = Node(load_settings(env={}, data_dir=tmp_path,
                              registry_url=f"http://127.0.0.1:{free_port()}/xds/registry"))
    client = SoapTestClient(app=node.app())
    try:
        sub = no_hash_size(f.submission(f.patient(804), 1))
        _long_mime_type(sub)
        reply = provide(client, sub, {sub.documents[0].id: b"never sent"})
        # had the metadata gone out, the unreachable registry would have answered XDSRegistryError
        assert reply.error_codes == [v.ErrorCode.REPOSITORY_METADATA_ERROR], reply.raw[:500]
        assert " mimeType " in next(reply.body.iter(f"{{{v.RS}}}RegistryError")).get("codeContext")
        assert stored_files(node) == [] and row_counts(node)["repo_document"] == 0
    finally:
        client.close()
        node.close()
