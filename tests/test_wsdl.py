"""The published WSDLs: well-formed, self-contained, IHE actions, and usable by zeep as an independent
SOAP toolkit; zeep-built requests must be valid against the official OASIS/IHE schemas."""

from __future__ import annotations

import copy
import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import zeep
from lxml import etree
from zeep.transports import Transport

from tests.corpus import CORPUS, SCHEMAS, assert_valid, requires_corpus

WSDL_DIR = Path(__file__).resolve().parents[1] / "wsdl"
CAPTURES = CORPUS / "03-messages" / "nist-message-captures" / "messagevalidator"
IPF_MESSAGES = CORPUS / "03-messages" / "ipf"

NS = {
    "wsdl": "http://schemas.xmlsoap.org/wsdl/",
    "soap12": "http://schemas.xmlsoap.org/wsdl/soap12/",
    "xsd": "http://www.w3.org/2001/XMLSchema",
    "wsaw": "http://www.w3.org/2006/05/addressing/wsdl",
    "wsam": "http://www.w3.org/2007/05/addressing/metadata",
    "wsp": "http://www.w3.org/ns/ws-policy",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
    "wsoma": "http://www.w3.org/2007/08/soap12-mtom-policy",
    "soap": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "query": "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0",
    "rim": "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0",
    "rs": "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0",
    "lcm": "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0",
    "xdsb": "urn:ihe:iti:xds-b:2007",
    "hl7": "urn:hl7-org:v3",
}

FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
PATIENT_ID = "'123^^^&1.2.3&ISO'"
APPROVED = "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"

ITI18 = ("DocumentRegistry_RegistryStoredQuery", "urn:ihe:iti:2007:RegistryStoredQuery", True)
ITI42 = ("DocumentRegistry_RegisterDocumentSet-b", "urn:ihe:iti:2007:RegisterDocumentSet-b", False)
ITI51 = ("DocumentRegistry_MultiPatientStoredQuery", "urn:ihe:iti:2009:MultiPatientStoredQuery", False)
FIND_DOCUMENTS_MPQ = "urn:uuid:3d1bdb10-39a2-11de-89c2-2f44d94eaa9f"
ITI41 = (
    "DocumentRepository_ProvideAndRegisterDocumentSet-b",
    "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
    False,
)
XDR41 = (
    "DocumentRecipient_ProvideAndRegisterDocumentSet-b",
    "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
    False,
)
ITI43 = ("DocumentRepository_RetrieveDocumentSet", "urn:ihe:iti:2007:RetrieveDocumentSet", False)
ITI38 = ("RespondingGateway_CrossGatewayQuery", "urn:ihe:iti:2007:CrossGatewayQuery", False)
ITI39 = ("RespondingGateway_CrossGatewayRetrieve", "urn:ihe:iti:2007:CrossGatewayRetrieve", False)
ITI55 = (
    "RespondingGateway_PRPA_IN201305UV02",
    "urn:hl7-org:v3:PRPA_IN201305UV02:CrossGatewayPatientDiscovery",
    False,
)
XCPD_RESPONSE_ACTION = "urn:hl7-org:v3:PRPA_IN201306UV02:CrossGatewayPatientDiscovery"

# file -> {endpoint path: (MTOM?, [(operation, request action, _)])}
EXPECTED: dict[str, dict[str, tuple[bool, list[tuple[str, str, bool]]]]] = {
    "registry.wsdl": {"/xds/registry": (False, [ITI18, ITI42, ITI51])},
    "repository.wsdl": {"/xds/repository": (True, [ITI41, ITI43])},
    "xca-responding-gateway.wsdl": {"/xca/query": (False, [ITI38]), "/xca/retrieve": (True, [ITI39])},
    "xcpd-responding-gateway.wsdl": {"/xcpd": (False, [ITI55])},
    "initiating-gateway.wsdl": {"/ig/registry": (False, [ITI18]), "/ig/repository": (True, [ITI43])},
    "xdr.wsdl": {"/xdr": (True, [XDR41])},
}
WSDL_FILES = sorted(EXPECTED)
ITI18_PORTS = [("registry.wsdl", "/xds/registry"), ("initiating-gateway.wsdl", "/ig/registry")]


class NoNetworkTransport(Transport):
    """A zeep transport that fails the test if zeep tries to fetch anything remote."""

    def _load_remote_data(self, url):  # zeep's hook for every http(s) load
        raise AssertionError(f"zeep tried to fetch {url}")


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


@functools.cache
def _client(name: str) -> zeep.Client:
    return zeep.Client(
        str(WSDL_DIR / name), transport=NoNetworkTransport(), settings=zeep.Settings(strict=True)
    )


def _doc(name: str) -> etree._Element:
    return etree.parse(str(WSDL_DIR / name), _parser()).getroot()


def _port_for(name: str, path: str):
    """(service name, port name) of the zeep port whose address ends with ``path``."""
    for service in _client(name).wsdl.services.values():
        for port in service.ports.values():
            if port.binding_options["address"].endswith(path):
                return service.name, port.name
    raise AssertionError(f"no port for {path} in {name}")


def _body(envelope: etree._Element) -> etree._Element:
    (child,) = envelope.find("soap:Body", NS)
    return child


def _find_documents(name: str, path: str) -> etree._Element:
    client = _client(name)
    service = client.bind(*_port_for(name, path))
    return client.create_message(
        service,
        "DocumentRegistry_RegistryStoredQuery",
        ResponseOption={"returnType": "LeafClass", "returnComposedObjects": True},
        AdhocQuery={
            "id": FIND_DOCUMENTS,
            "Slot": [
                {"name": "$XDSDocumentEntryPatientId", "ValueList": {"Value": [PATIENT_ID]}},
                {"name": "$XDSDocumentEntryStatus", "ValueList": {"Value": [APPROVED]}},
            ],
        },
    )


# --- structure -------------------------------------------------------------------------------


def test_build_script_output_is_committed():
    spec = importlib.util.spec_from_file_location("wsdl_build", WSDL_DIR / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # dataclasses look their module up there
    try:
        spec.loader.exec_module(build)
    finally:
        del sys.modules[spec.name]
    assert sorted(w.file for w in build.WSDLS) == WSDL_FILES
    for w in build.WSDLS:
        assert (WSDL_DIR / w.file).read_bytes() == build.build(w), f"{w.file} is stale: run wsdl/build.py"


@pytest.mark.parametrize("name", WSDL_FILES)
def test_wsdl_is_self_contained(name):
    doc = _doc(name)
    assert etree.QName(doc).localname == "definitions"
    assert doc.xpath("//xsd:include | //xsd:redefine | //wsdl:import", namespaces=NS) == []
    assert doc.xpath("//xsd:import[@schemaLocation]", namespaces=NS) == []
    # every imported namespace is supplied by a sibling schema in <types>
    inline = set(doc.xpath("wsdl:types/xsd:schema/@targetNamespace", namespaces=NS))
    assert set(doc.xpath("//xsd:import/@namespace", namespaces=NS)) <= inline
    # every message part names an element declared inline
    for element in doc.xpath("wsdl:message/wsdl:part/@element", namespaces=NS):
        prefix, local = element.split(":")
        ns = doc.nsmap[prefix]
        assert doc.xpath(
            "wsdl:types/xsd:schema[@targetNamespace=$ns]/xsd:element[@name=$local]",
            namespaces=NS,
            ns=ns,
            local=local,
        ), element


@pytest.mark.parametrize("name", WSDL_FILES)
def test_bindings_are_soap12_document_literal_with_addressing(name):
    doc = _doc(name)
    bindings = doc.findall("wsdl:binding", NS)
    assert len(bindings) == len(EXPECTED[name])
    for binding in bindings:
        soap = binding.find("soap12:binding", NS)
        assert soap is not None and soap.get("style") == "document"
        assert soap.get("transport") == "http://schemas.xmlsoap.org/soap/http"
        assert binding.find("wsaw:UsingAddressing", NS) is not None
        assert binding.xpath(".//wsdl:input/*|.//wsdl:output/*", namespaces=NS)
        for body in binding.xpath(".//wsdl:input/*|.//wsdl:output/*", namespaces=NS):
            assert body.tag == f"{{{NS['soap12']}}}body" and body.get("use") == "literal"
    assert doc.xpath("//*[namespace-uri()='http://schemas.xmlsoap.org/wsdl/soap/']") == []


@pytest.mark.parametrize("name", WSDL_FILES)
def test_operations_and_actions_per_endpoint(name):
    client = _client(name)
    seen = {}
    for service in client.wsdl.services.values():
        for port in service.ports.values():
            address = port.binding_options["address"]
            assert address.startswith("http://localhost:8080/")
            path = address.removeprefix("http://localhost:8080")
            ops = port.binding._operations
            seen[path] = sorted(ops)
            for op_name, action, _ in EXPECTED[name][path][1]:
                op = ops[op_name]
                assert op.soapaction == action
                assert op.abstract.wsa_action == action
    assert seen == {path: sorted(o[0] for o in ops) for path, (_, ops) in EXPECTED[name].items()}


@pytest.mark.parametrize("name", WSDL_FILES)
def test_input_and_output_actions_in_both_addressing_namespaces(name):
    doc = _doc(name)
    for op in doc.xpath("wsdl:portType/wsdl:operation", namespaces=NS):
        (inp,) = op.findall("wsdl:input", NS)
        (out,) = op.findall("wsdl:output", NS)
        request = inp.get(f"{{{NS['wsam']}}}Action")
        response = out.get(f"{{{NS['wsam']}}}Action")
        assert inp.get(f"{{{NS['wsaw']}}}Action") == request
        assert out.get(f"{{{NS['wsaw']}}}Action") == response
        expected = XCPD_RESPONSE_ACTION if request == ITI55[1] else request + "Response"
        assert response == expected


@pytest.mark.parametrize("name", WSDL_FILES)
def test_mtom_policy_exactly_where_the_transaction_uses_mtom(name):
    doc = _doc(name)
    policies = {
        p.get(f"{{{NS['wsu']}}}Id"): p
        for p in doc.findall("wsp:Policy", NS)
        if p.find("wsoma:OptimizedMimeSerialization", NS) is not None
    }
    for port in doc.xpath("wsdl:service/wsdl:port", namespaces=NS):
        path = port.find("soap12:address", NS).get("location").removeprefix("http://localhost:8080")
        binding_name = port.get("binding").split(":")[1]
        (binding,) = doc.xpath("wsdl:binding[@name=$n]", namespaces=NS, n=binding_name)
        refs = [r.get("URI").lstrip("#") for r in binding.findall("wsp:PolicyReference", NS)]
        mtom = any(ref in policies for ref in refs)
        assert mtom == EXPECTED[name][path][0], path


# --- zeep-built requests -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "path"), ITI18_PORTS)
def test_zeep_builds_find_documents_with_ebrs_shape(name, path):
    envelope = _find_documents(name, path)
    assert envelope.tag == f"{{{NS['soap']}}}Envelope"
    assert envelope.findtext("soap:Header/wsa:Action", namespaces=NS) == ITI18[1]
    assert envelope.findtext("soap:Header/wsa:To", namespaces=NS) == "http://localhost:8080" + path
    req = _body(envelope)
    assert req.tag == f"{{{NS['query']}}}AdhocQueryRequest"
    children = [c.tag for c in req]
    assert children == [f"{{{NS['query']}}}ResponseOption", f"{{{NS['rim']}}}AdhocQuery"]
    option = req.find("query:ResponseOption", NS)
    assert option.get("returnType") == "LeafClass"
    assert option.get("returnComposedObjects") == "true"
    query = req.find("rim:AdhocQuery", NS)
    assert query.get("id") == FIND_DOCUMENTS
    slots = {
        s.get("name"): s.xpath("rim:ValueList/rim:Value/text()", namespaces=NS)
        for s in query.findall("rim:Slot", NS)
    }
    assert slots == {"$XDSDocumentEntryPatientId": [PATIENT_ID], "$XDSDocumentEntryStatus": [APPROVED]}


@pytest.mark.parametrize(
    ("name", "path", "op"),
    [
        ("repository.wsdl", "/xds/repository", ITI43),
        ("xca-responding-gateway.wsdl", "/xca/retrieve", ITI39),
        ("initiating-gateway.wsdl", "/ig/repository", ITI43),
    ],
)
def test_zeep_builds_retrieve_document_set(name, path, op):
    client = _client(name)
    service = client.bind(*_port_for(name, path))
    envelope = client.create_message(
        service,
        op[0],
        DocumentRequest=[
            {"HomeCommunityId": "urn:oid:1.2.3", "RepositoryUniqueId": "1.2.3.4", "DocumentUniqueId": "1.2.3.4.5"},
            {"RepositoryUniqueId": "1.2.3.4", "DocumentUniqueId": "1.2.3.4.6"},
        ],
    )
    assert envelope.findtext("soap:Header/wsa:Action", namespaces=NS) == op[1]
    req = _body(envelope)
    assert req.tag == f"{{{NS['xdsb']}}}RetrieveDocumentSetRequest"
    docs = req.findall("xdsb:DocumentRequest", NS)
    assert [[etree.QName(c).localname for c in d] for d in docs] == [
        ["HomeCommunityId", "RepositoryUniqueId", "DocumentUniqueId"],
        ["RepositoryUniqueId", "DocumentUniqueId"],
    ]
    assert [d.findtext("xdsb:DocumentUniqueId", namespaces=NS) for d in docs] == ["1.2.3.4.5", "1.2.3.4.6"]


def test_zeep_builds_xcpd_request_around_hl7_content():
    client = _client("xcpd-responding-gateway.wsdl")
    id_el = etree.Element(f"{{{NS['hl7']}}}id", root="1.2.840.114350", extension="123")
    envelope = client.create_message(
        client.service, ITI55[0], _value_1=[id_el], _attr_1={"ITSVersion": "XML_1.0"}
    )
    assert envelope.findtext("soap:Header/wsa:Action", namespaces=NS) == ITI55[1]
    req = _body(envelope)
    assert req.tag == f"{{{NS['hl7']}}}PRPA_IN201305UV02"
    assert req.get("ITSVersion") == "XML_1.0"
    assert req.find("hl7:id", NS).get("extension") == "123"


# --- faithful to ebRS 3.0 / XDS.b ------------------------------------------------------------


@requires_corpus
@pytest.mark.parametrize(("name", "path"), ITI18_PORTS)
def test_zeep_find_documents_is_valid_against_official_query_xsd(name, path):
    if not (SCHEMAS / "ebRS" / "query.xsd").is_file():
        pytest.skip("official ebRS query.xsd not in corpus")
    assert_valid(_body(_find_documents(name, path)))


def _find_documents_for_multiple_patients() -> etree._Element:
    client = _client("registry.wsdl")
    return client.create_message(
        client.service,
        ITI51[0],
        ResponseOption={"returnType": "ObjectRef", "returnComposedObjects": True},
        AdhocQuery={
            "id": FIND_DOCUMENTS_MPQ,
            "Slot": [
                {"name": "$XDSDocumentEntryPatientId", "ValueList": {"Value": ["('1^^^&1.2.3&ISO','2^^^&1.2.3&ISO')"]}},
                {"name": "$XDSDocumentEntryStatus", "ValueList": {"Value": [APPROVED]}},
            ],
        },
    )


def test_zeep_builds_multi_patient_stored_query():
    """ITI-51 (ITI TF-2b 3.51): an AdhocQueryRequest under its own action at the registry's address."""
    envelope = _find_documents_for_multiple_patients()
    assert envelope.findtext("soap:Header/wsa:Action", namespaces=NS) == ITI51[1]
    assert envelope.findtext("soap:Header/wsa:To", namespaces=NS) == "http://localhost:8080/xds/registry"
    req = _body(envelope)
    assert req.tag == f"{{{NS['query']}}}AdhocQueryRequest"
    assert req.find("rim:AdhocQuery", NS).get("id") == FIND_DOCUMENTS_MPQ


@requires_corpus
def test_zeep_multi_patient_query_is_valid_against_official_query_xsd():
    if not (SCHEMAS / "ebRS" / "query.xsd").is_file():
        pytest.skip("official ebRS query.xsd not in corpus")
    assert_valid(_body(_find_documents_for_multiple_patients()))


@requires_corpus
def test_zeep_retrieve_and_pnr_are_valid_against_official_xdsb_xsd():
    client = _client("repository.wsdl")
    retrieve = client.create_message(
        client.service,
        ITI43[0],
        DocumentRequest=[
            {"RepositoryUniqueId": "1.2.3.4", "DocumentUniqueId": "1.2.3.4.5"},
            {"HomeCommunityId": "urn:oid:1.2.3", "RepositoryUniqueId": "1.2.3.4", "DocumentUniqueId": "1.6"},
        ],
    )
    assert_valid(_body(retrieve))

    submit = etree.parse(str(IPF_MESSAGES / "SubmitObjectsRequest_ebrs30.xml"), _parser()).getroot()
    objects = list(submit.find("rim:RegistryObjectList", NS))
    doc_ids = [e.get("id") for e in objects if etree.QName(e).localname == "ExtrinsicObject"]
    assert objects and doc_ids
    pnr = client.create_message(
        client.service,
        ITI41[0],
        SubmitObjectsRequest={"RegistryObjectList": {"_value_1": [copy.deepcopy(e) for e in objects]}},
        Document=[{"_value_1": b"<ClinicalDocument/>", "id": i} for i in doc_ids],
    )
    body = _body(pnr)
    assert [etree.QName(c).localname for c in body] == ["SubmitObjectsRequest"] + ["Document"] * len(doc_ids)
    assert len(body.find("lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS)) == len(objects)
    assert_valid(body)


@functools.cache
def _our_schema() -> etree.XMLSchema:
    """All of wsdl/schema/ as one lxml schema (the standalone files, relative imports)."""
    schema_dir = WSDL_DIR / "schema"
    imports = "".join(
        f'<xs:import namespace="{ns}" schemaLocation="{(schema_dir / f).as_uri()}"/>'
        for ns, f in [
            ("urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0", "query.xsd"),
            ("urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0", "lcm.xsd"),
            ("urn:ihe:iti:xds-b:2007", "xdsb.xsd"),
            ("urn:hl7-org:v3", "hl7v3.xsd"),
        ]
    )
    wrapper = f'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:t">{imports}</xs:schema>'
    return etree.XMLSchema(etree.fromstring(wrapper.encode()))


def _assert_ours_accepts(el: etree._Element) -> None:
    schema = _our_schema()
    doc = etree.fromstring(etree.tostring(el))
    assert schema.validate(doc), "\n".join(str(e) for e in schema.error_log)


@requires_corpus
@pytest.mark.parametrize(
    "capture",
    ["soap-xcq-resp.xml", "soap-xcq-resp-error.xml", "soap-ret-resp.xml", "soap-xret-resp.xml", "sq-resp-lc.xml"],
)
def test_our_schemas_accept_real_responses(capture):
    path = CAPTURES / capture
    if not path.is_file():
        pytest.skip(f"{capture} not in corpus")
    root = etree.parse(str(path), _parser()).getroot()
    body = root.find("soap:Body", NS)
    _assert_ours_accepts(body[0] if body is not None else root)


@requires_corpus
@pytest.mark.parametrize("message", ["iti18request.xml", "SubmitObjectsRequest_ebrs30.xml", "iti55-sample-request.xml"])
def test_our_schemas_accept_real_requests(message):
    path = IPF_MESSAGES / message
    if not path.is_file():
        pytest.skip(f"{message} not in corpus")
    root = etree.parse(str(path), _parser()).getroot()
    body = root.find("soap:Body", NS)
    _assert_ours_accepts(body[0] if body is not None else root)


def test_our_schemas_reject_what_ebrs_rejects():
    bad = etree.fromstring(
        b'<q:AdhocQueryRequest xmlns:q="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"'
        b' xmlns:r="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">'
        b'<r:AdhocQuery id="urn:uuid:1"/><q:ResponseOption returnType="LeafClass"/></q:AdhocQueryRequest>'
    )
    assert not _our_schema().validate(bad)  # wrong order
    bad_type = etree.fromstring(
        b'<q:AdhocQueryRequest xmlns:q="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"'
        b' xmlns:r="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">'
        b'<q:ResponseOption returnType="Everything"/><r:AdhocQuery id="urn:uuid:1"/></q:AdhocQueryRequest>'
    )
    assert not _our_schema().validate(bad_type)
    no_repo = etree.fromstring(
        b'<RetrieveDocumentSetRequest xmlns="urn:ihe:iti:xds-b:2007">'
        b"<DocumentRequest><DocumentUniqueId>1.2</DocumentUniqueId></DocumentRequest>"
        b"</RetrieveDocumentSetRequest>"
    )
    assert not _our_schema().validate(no_repo)


# --- zeep reads real responses ----------------------------------------------------------------


@requires_corpus
def test_zeep_parses_real_query_and_retrieve_responses():
    client = _client("xca-responding-gateway.wsdl")
    query = client.bind(*_port_for("xca-responding-gateway.wsdl", "/xca/query"))._binding
    retrieve = client.bind(*_port_for("xca-responding-gateway.wsdl", "/xca/retrieve"))._binding

    ok = etree.parse(str(CAPTURES / "soap-xcq-resp.xml"), _parser()).getroot()
    result = query.get(ITI38[0]).process_reply(ok)
    assert result.status == "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
    objects = result.RegistryObjectList._value_1
    assert objects and all(etree.QName(o).localname == "ExtrinsicObject" for o in objects)

    err = etree.parse(str(CAPTURES / "soap-xcq-resp-error.xml"), _parser()).getroot()
    result = query.get(ITI38[0]).process_reply(err)
    (error,) = result.RegistryErrorList.RegistryError
    assert (error.errorCode, error.location) == ("MyBigError", "urn:oid:1.2.3")

    ret = etree.parse(str(CAPTURES / "soap-ret-resp.xml"), _parser()).getroot()
    result = retrieve.get(ITI39[0]).process_reply(ret)
    assert result.RegistryResponse.status.endswith(":Success")
    assert [d.mimeType for d in result.DocumentResponse] == ["text/xml", "text/xml"]
    assert result.DocumentResponse[0].Document.startswith(b"R0lGOD")
