"""Property: whatever value one metadata field of ITI-42 / ITI-41 carries, the answer is a standard one.

Hypothesis drives each field with boundary values (empty, lengths around every column size, huge
and negative numbers, astral and combining unicode, control characters and NUL) over HTTP, on
SQLite and PostgreSQL, and checks: never a 500; Success stores the whole submission, anything else
stores nothing; a RegistryResponse failure carries IHE codes and names the field; a SOAP fault
only for characters XML cannot carry. Examples are derandomized and bounded (CI budget).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from sqlalchemy import text

from tests import factories as f
from tests.registry.test_limits import row_counts
from tests.repository.test_provide_and_retrieve import no_hash_size, stored_files
from xds_node.db import make_test_engine
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import Author, Code, LocalizedString, Submission
from xds_node.soap.envelope import build_request

TOKEN = "QQ7TOKEN7QQ"
SIZE_MARK = 987654321987  # a size the codec writes as is; its digits are then replaced by the value
E = v.ErrorCode
#: What a rejected register may answer with (TF-3 Table 4.2.4.1-2), besides a fault for non-XML characters.
ALLOWED = {E.REGISTRY_METADATA_ERROR, E.REPOSITORY_METADATA_ERROR, E.PATIENT_ID_DOES_NOT_MATCH,
           E.REGISTRY_DUPLICATE_UNIQUE_ID, E.DUPLICATE_UNIQUE_ID, E.NON_IDENTICAL_HASH}
LENGTHS = [1, 13, 14, 15, 40, 41, 64, 65, 80, 81, 128, 129, 160, 161, 256, 257, 300, 301, 400, 401, 3000]
#: Tables holding whole objects: a Success adds exactly one submission's worth to each.
CORE = ("xds_document", "xds_submission_set", "xds_folder", "xds_association", "repo_document")
SETTINGS = settings(max_examples=45, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@dataclass(frozen=True)
class Field:
    name: str  # as IHE names it, and as the error must name it
    put: Callable[[Submission], None]  # writes TOKEN where the value travels
    numeric: bool = False

    def __repr__(self) -> str:
        return self.name


def _doc(attr: str) -> Callable[[Submission], None]:
    return lambda s: setattr(s.documents[0], attr, TOKEN)


def _code(attr: str, part: str = "code") -> Callable[[Submission], None]:
    def put(s: Submission) -> None:
        old = getattr(s.documents[0], attr)
        setattr(s.documents[0], attr, Code(TOKEN, old.scheme) if part == "code" else Code(old.code, TOKEN))
    return put


FIELDS = [
    Field("uniqueId", _doc("unique_id")),
    Field("patientId", _doc("patient_id")),
    Field("mimeType", _doc("mime_type")),
    Field("hash", _doc("hash")),
    Field("size", lambda s: setattr(s.documents[0], "size", SIZE_MARK), numeric=True),
    Field("repositoryUniqueId", _doc("repository_unique_id")),
    Field("creationTime", _doc("creation_time")),
    Field("serviceStartTime", _doc("service_start_time")),
    Field("languageCode", _doc("language_code")),
    Field("sourcePatientId", _doc("source_patient_id")),
    Field("legalAuthenticator", _doc("legal_authenticator")),
    Field("classCode", _code("class_code")),
    Field("classCode", _code("class_code", "scheme")),
    Field("typeCode", _code("type_code")),
    Field("formatCode", _code("format_code")),
    Field("healthcareFacilityTypeCode", _code("healthcare_facility_type_code")),
    Field("practiceSettingCode", _code("practice_setting_code", "scheme")),
    Field("confidentialityCode", lambda s: setattr(s.documents[0], "confidentiality_codes",
                                                   [Code(TOKEN, "2.16.840.1.113883.5.25")])),
    Field("eventCodeList", lambda s: setattr(s.documents[0], "event_codes", [Code(TOKEN, "1.2.3")])),
    Field("referenceIdList", lambda s: setattr(s.documents[0], "reference_ids", [TOKEN])),
    Field("sourcePatientInfo", lambda s: setattr(s.documents[0], "source_patient_info", [TOKEN])),
    Field("authorPerson", lambda s: setattr(s.documents[0], "authors", [Author(person=TOKEN)])),
    Field("authorInstitution", lambda s: setattr(s.documents[0], "authors",
                                                 [Author(person="^Doe^J", institutions=[TOKEN])])),
    Field("title", lambda s: setattr(s.documents[0], "title", [LocalizedString(TOKEN)])),
    Field("comments", lambda s: setattr(s.documents[0], "comments", [LocalizedString(TOKEN)])),
    Field("SubmissionSet uniqueId", lambda s: setattr(s.submission_set, "unique_id", TOKEN)),
    Field("sourceId", lambda s: setattr(s.submission_set, "source_id", TOKEN)),
    Field("submissionTime", lambda s: setattr(s.submission_set, "submission_time", TOKEN)),
    Field("contentTypeCode", lambda s: setattr(s.submission_set, "content_type_code", Code(TOKEN, "1.2.3"))),
    Field("intendedRecipient", lambda s: setattr(s.submission_set, "intended_recipients", [TOKEN])),
    Field("codeList", lambda s: setattr(s.folders[0], "codes", [Code(TOKEN, "1.3.6.1.4.1.21367.100.1")])),
    Field("Folder title", lambda s: setattr(s.folders[0], "title", [LocalizedString(TOKEN)])),
    Field("SubmissionSetStatus", lambda s: setattr(s.associations[0], "submission_set_status", TOKEN)),
]
#: ITI-41: the repository fills hash, size and repositoryUniqueId itself; the rest is the same metadata.
FIELDS_41 = [fd for fd in FIELDS if fd.name not in {"repositoryUniqueId", "sourcePatientInfo", "authorInstitution"}]

_chars = st.sampled_from(["x", "7", ".", "^", "&", "<", "é", "\u0301", "中", "\U0001d11e", "\U0001f600", " "])
_long = st.builds(lambda n, c: c * n, st.sampled_from(LENGTHS), _chars)
_unicode = st.text(st.characters(codec="utf-8"), max_size=24)  # astral planes included, no surrogates
_control = st.one_of(st.just("\x00"), st.just("a\x00b"), st.text(st.characters(max_codepoint=0x1F), min_size=1,
                                                                  max_size=3), st.just("\ufffe"))
STRINGS = st.one_of(st.just(""), st.sampled_from([" ", "\t\n", "  x  "]), _long, _unicode, _control)
NUMBERS = st.one_of(
    st.sampled_from(["0", "-1", "1", str(2**31 - 1), str(2**31), str(2**63 - 1), str(2**63), str(-(2**63) - 1),
                     str(10**23), "9" * 4400, "1e23", "+5", " 7 ", "1_000", "\u0661\u0662", "0x10", "", "abc"]),
    st.integers().map(str),
)


def _xml_safe(value: str) -> bool:
    return all(c in "\t\n\r" or (ord(c) >= 0x20 and c not in "\ufffe\uffff") for c in value)


def _payload(action: str, body, value: str, to: str = "http://testserver") -> tuple[bytes, str]:
    """The request with ``value`` where the field's TOKEN was, written as raw XML text (so control
    characters and NUL reach the server as a careless client would send them)."""
    payload, ct, _ = build_request(action, body, to=to)
    assert isinstance(payload, bytes)
    payload = payload.replace(str(SIZE_MARK).encode(), TOKEN.encode())
    assert TOKEN.encode() in payload
    return payload.replace(TOKEN.encode(), escape(value, {'"': "&quot;"}).encode("utf-8")), ct


def _check(reply, field: Field, value: str, before: dict, after: dict, expected_delta: dict) -> None:
    assert reply.http_status != 500 and reply.http_status < 500, reply.raw[:600]
    if reply.is_fault:
        assert not _xml_safe(value), f"{field}={value!r}: fault {reply.fault_reason}"
        assert after == before
        return
    delta = {k: after[k] - before[k] for k in after}
    if reply.status == v.ResponseStatus.SUCCESS:  # every object stored (coded values etc. vary with the field)
        assert {k: delta[k] for k in CORE} == {k: expected_delta[k] for k in CORE}, \
            f"{field}={value!r}: partly stored {delta}"
        return
    assert reply.status == v.ResponseStatus.FAILURE, reply.raw[:600]
    assert delta == dict.fromkeys(delta, 0), f"{field}={value!r}: failure stored {delta}"
    codes = set(reply.error_codes)
    assert codes and codes <= ALLOWED, f"{field}={value!r}: {codes}"
    contexts = " ".join(e.get("codeContext", "") for e in reply.body.iter(f"{{{v.RS}}}RegistryError"))
    name = field.name.rsplit(" ", 1)[-1]
    assert name in contexts or (name == "authorPerson" and "author" in contexts), \
        f"{field}={value!r}: the error does not name the field: {contexts[:400]}"


def _counts(node) -> dict:
    return {**row_counts(node), "files": len(stored_files(node))}


def _register_once(client, node) -> dict:
    """What one valid submission (1 document, 1 folder) adds, as the yardstick for Success."""
    before = _counts(node)
    sub = f.submission(f.patient(900), 1, with_folder=True)
    sub.documents[0].comments = [LocalizedString(TOKEN)]
    payload, ct = _payload(v.Action.ITI42, rim.write_submit_objects_request(sub), "x")
    assert client.post_raw("/xds/registry", payload, ct).status == v.ResponseStatus.SUCCESS
    after = _counts(node)
    return {k: after[k] - before[k] for k in after}


@pytest.mark.parametrize("numeric", [False, True], ids=["strings", "numbers"])
def test_iti42_any_field_value_gets_a_standard_answer(client, node, numeric):
    expected = _register_once(client, node)
    fields = [fd for fd in FIELDS if fd.numeric == numeric]

    @SETTINGS
    @given(field=st.sampled_from(fields), value=NUMBERS if numeric else STRINGS)
    def prop(field: Field, value: str) -> None:
        sub = f.submission(f.patient(901), 1, with_folder=True)
        field.put(sub)
        payload, ct = _payload(v.Action.ITI42, rim.write_submit_objects_request(sub), value)
        before = _counts(node)
        reply = client.post_raw("/xds/registry", payload, ct)
        _check(reply, field, value, before, _counts(node), expected)

    prop()


def test_iti41_any_field_value_gets_a_standard_answer(client, node):
    content = b"<ClinicalDocument>property test</ClinicalDocument>"

    def provide(field: Field | None, value: str):
        sub = no_hash_size(f.submission(f.patient(902), 1, with_folder=True))
        sub.documents[0].comments = [LocalizedString(TOKEN)]
        if field is not None:
            sub.documents[0].comments = []
            field.put(sub)
        el = etree.Element(f"{{{v.XDSB}}}Document", nsmap={"xdsb": v.XDSB})
        el.text = base64.b64encode(content).decode()  # inline: the payload stays one XML document
        body = xdsb.write_provide_request(sub, {sub.documents[0].id: el})
        payload, ct = _payload(v.Action.ITI41, body, value)
        return client.post_raw("/xds/repository", payload, ct)

    before = _counts(node)
    assert provide(None, "x").status == v.ResponseStatus.SUCCESS
    after = _counts(node)
    expected = {k: after[k] - before[k] for k in after}
    expected["files"] = 0  # identical bytes share one content file

    @SETTINGS
    @given(field=st.sampled_from(FIELDS_41), data=st.data())
    def prop(field: Field, data) -> None:
        value = data.draw(NUMBERS if field.numeric else STRINGS)
        before = _counts(node)
        reply = provide(field, value)
        _check(reply, field, value, before, _counts(node), expected)

    prop()


@pytest.mark.server
def test_boundary_values_over_a_real_server(settings, tmp_path):
    """The same answers from a node listening on a socket (uvicorn, httptools), on both backends."""
    from tests.conftest import LiveNode
    from tests.soapkit import SoapTestClient

    node = LiveNode(tmp_path, {"XDS_DATABASE_URL": settings.db_url})
    client = SoapTestClient(base_url=node.url)
    try:
        named = {fd.name: fd for fd in reversed(FIELDS)}  # the first of each name
        cases = [(named["size"], str(10**23)), (named["classCode"], "C" * 300), (named["referenceIdList"], "R" * 401),
                 (named["title"], "a\x00b"), (named["uniqueId"], "\U0001d11e" * 128)]
        for field, value in cases:
            sub = f.submission(f.patient(903), 1)
            field.put(sub)
            payload, ct = _payload(v.Action.ITI42, rim.write_submit_objects_request(sub), value, to=node.url)
            reply = client.post_raw("/xds/registry", payload, ct)
            assert reply.http_status < 500, reply.raw[:500]
            if _xml_safe(value):
                assert reply.status == (v.ResponseStatus.SUCCESS if field.name == "uniqueId"
                                        else v.ResponseStatus.FAILURE), (field, reply.raw[:500])
                if reply.status == v.ResponseStatus.FAILURE:
                    assert field.name in reply.raw.decode(), reply.raw[:500]
            else:
                assert reply.is_fault
        engine = make_test_engine(settings.db_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as conn:  # only the astral-plane uniqueId was stored (128 characters fit)
            assert conn.scalar(text("SELECT count(*) FROM xds_document")) == 1
        engine.dispose()
    finally:
        client.close()
        node.stop()
