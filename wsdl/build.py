"""Generate the node's published WSDLs from one table of transactions and the schemas in ``schema/``.

Why generated: every WSDL must be self-contained (the node serves only ``<endpoint>?wsdl``, so a
toolkit cannot fetch ``schema/*.xsd`` imports), yet the schemas should exist once. This script
inlines the schemas each WSDL needs into its ``<types>`` (imports by namespace only) and writes
portType/binding/service from the table below, so actions, MTOM policy and addressing stay
consistent across files.

Run ``python wsdl/build.py`` after editing a schema or the table; ``--check`` exits 1 when a
committed WSDL differs from what would be generated. The output is committed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

HERE = Path(__file__).resolve().parent
SCHEMA_DIR = HERE / "schema"

WSDL = "http://schemas.xmlsoap.org/wsdl/"
SOAP12 = "http://schemas.xmlsoap.org/wsdl/soap12/"
XSD = "http://www.w3.org/2001/XMLSchema"
WSAW = "http://www.w3.org/2006/05/addressing/wsdl"
WSAM = "http://www.w3.org/2007/05/addressing/metadata"
WSP = "http://www.w3.org/ns/ws-policy"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
MTOM_POLICY = "http://www.w3.org/2007/08/soap12-mtom-policy"
HTTP_TRANSPORT = "http://schemas.xmlsoap.org/soap/http"

IHE_XDSB = "urn:ihe:iti:xds-b:2007"
IHE_XCPD = "urn:ihe:iti:xcpd:2009"
PLACEHOLDER_ORIGIN = "http://localhost:8080"  # the node replaces it with its public URL when serving

# schema prefix -> (namespace, file); the prefixes are also used in message element QNames below
SCHEMAS: dict[str, tuple[str, str]] = {
    "rim": ("urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0", "rim.xsd"),
    "rs": ("urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0", "rs.xsd"),
    "query": ("urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0", "query.xsd"),
    "lcm": ("urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0", "lcm.xsd"),
    "xdsb": (IHE_XDSB, "xdsb.xsd"),
    "hl7": ("urn:hl7-org:v3", "hl7v3.xsd"),
}


@dataclass(frozen=True)
class Operation:
    """One IHE transaction as a WSDL operation (document/literal, one body part each way)."""

    name: str  # IHE operation name, e.g. DocumentRegistry_RegistryStoredQuery
    message: str  # message name stem, e.g. RegistryStoredQuery
    action: str  # request wsa:Action (also the SOAP 1.2 action)
    response_action: str
    request: str  # "prefix:Element" of the request body
    response: str


@dataclass(frozen=True)
class Port:
    """One endpoint: its own portType, binding and port, so each URL lists only what it serves."""

    name: str  # stem for <name>_PortType / <name>_Binding_Soap12 / <name>_Port_Soap12
    path: str
    operations: tuple[Operation, ...]
    mtom: bool = False


@dataclass(frozen=True)
class Wsdl:
    file: str
    name: str
    target_namespace: str
    documentation: str
    service: str
    ports: tuple[Port, ...]


def _xds(name: str, message: str, action: str, request: str, response: str) -> Operation:
    return Operation(name, message, action, action + "Response", request, response)


ITI18 = _xds(
    "DocumentRegistry_RegistryStoredQuery",
    "RegistryStoredQuery",
    "urn:ihe:iti:2007:RegistryStoredQuery",
    "query:AdhocQueryRequest",
    "query:AdhocQueryResponse",
)
ITI42 = _xds(
    "DocumentRegistry_RegisterDocumentSet-b",
    "RegisterDocumentSet-b",
    "urn:ihe:iti:2007:RegisterDocumentSet-b",
    "lcm:SubmitObjectsRequest",
    "rs:RegistryResponse",
)
ITI51 = Operation(
    "DocumentRegistry_MultiPatientStoredQuery",
    "MultiPatientStoredQuery",
    "urn:ihe:iti:2009:MultiPatientStoredQuery",
    "urn:ihe:iti:2009:MultiPatientStoredQueryResponse",
    "query:AdhocQueryRequest",
    "query:AdhocQueryResponse",
)
ITI41 = _xds(
    "DocumentRepository_ProvideAndRegisterDocumentSet-b",
    "ProvideAndRegisterDocumentSet-b",
    "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
    "xdsb:ProvideAndRegisterDocumentSetRequest",
    "rs:RegistryResponse",
)
#: ITI-41 as an XDR Document Recipient receives it (ITI TF-1 15; eHealth Exchange Document Submission)
XDR41 = _xds(
    "DocumentRecipient_ProvideAndRegisterDocumentSet-b",
    "ProvideAndRegisterDocumentSet-b",
    "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
    "xdsb:ProvideAndRegisterDocumentSetRequest",
    "rs:RegistryResponse",
)
ITI43 = _xds(
    "DocumentRepository_RetrieveDocumentSet",
    "RetrieveDocumentSet",
    "urn:ihe:iti:2007:RetrieveDocumentSet",
    "xdsb:RetrieveDocumentSetRequest",
    "xdsb:RetrieveDocumentSetResponse",
)
ITI38 = _xds(
    "RespondingGateway_CrossGatewayQuery",
    "CrossGatewayQuery",
    "urn:ihe:iti:2007:CrossGatewayQuery",
    "query:AdhocQueryRequest",
    "query:AdhocQueryResponse",
)
ITI39 = _xds(
    "RespondingGateway_CrossGatewayRetrieve",
    "CrossGatewayRetrieve",
    "urn:ihe:iti:2007:CrossGatewayRetrieve",
    "xdsb:RetrieveDocumentSetRequest",
    "xdsb:RetrieveDocumentSetResponse",
)
ITI55 = Operation(
    "RespondingGateway_PRPA_IN201305UV02",
    "PRPA_IN201305UV02",
    "urn:hl7-org:v3:PRPA_IN201305UV02:CrossGatewayPatientDiscovery",
    "urn:hl7-org:v3:PRPA_IN201306UV02:CrossGatewayPatientDiscovery",
    "hl7:PRPA_IN201305UV02",
    "hl7:PRPA_IN201306UV02",
)

WSDLS: tuple[Wsdl, ...] = (
    Wsdl(
        "registry.wsdl",
        "DocumentRegistry",
        IHE_XDSB,
        "xds-node IHE XDS.b Document Registry: Registry Stored Query (ITI-18), "
        "Register Document Set-b (ITI-42), Multi-Patient Stored Query (ITI-51, internal consumers only)",
        "DocumentRegistry_Service",
        (Port("DocumentRegistry", "/xds/registry", (ITI18, ITI42, ITI51)),),
    ),
    Wsdl(
        "repository.wsdl",
        "DocumentRepository",
        IHE_XDSB,
        "xds-node IHE XDS.b Document Repository: Provide and Register Document Set-b (ITI-41), "
        "Retrieve Document Set (ITI-43); both MTOM/XOP",
        "DocumentRepository_Service",
        (Port("DocumentRepository", "/xds/repository", (ITI41, ITI43), mtom=True),),
    ),
    Wsdl(
        "xca-responding-gateway.wsdl",
        "RespondingGateway",
        IHE_XDSB,
        "xds-node IHE XCA Responding Gateway: Cross Gateway Query (ITI-38) at /xca/query, "
        "Cross Gateway Retrieve (ITI-39, MTOM/XOP) at /xca/retrieve",
        "RespondingGateway_Service",
        (
            Port("RespondingGateway_Query", "/xca/query", (ITI38,)),
            Port("RespondingGateway_Retrieve", "/xca/retrieve", (ITI39,), mtom=True),
        ),
    ),
    Wsdl(
        "xcpd-responding-gateway.wsdl",
        "XCPDRespondingGateway",
        IHE_XCPD,
        "xds-node IHE XCPD Responding Gateway: Cross Gateway Patient Discovery (ITI-55)",
        "RespondingGateway_Service",
        (Port("RespondingGateway", "/xcpd", (ITI55,)),),
    ),
    Wsdl(
        "xdr.wsdl",
        "DocumentRecipient",
        IHE_XDSB,
        "xds-node IHE XDR Document Recipient for partners (eHealth Exchange Document Submission): "
        "Provide and Register Document Set-b (ITI-41, MTOM/XOP) at /xdr; WS-Security + SAML required",
        "DocumentRecipient_Service",
        (Port("DocumentRecipient", "/xdr", (XDR41,), mtom=True),),
    ),
    Wsdl(
        "initiating-gateway.wsdl",
        "InitiatingGateway",
        IHE_XDSB,
        "xds-node IHE XCA Initiating Gateway for local consumers: Registry Stored Query (ITI-18) "
        "at /ig/registry, Retrieve Document Set (ITI-43, MTOM/XOP) at /ig/repository",
        "InitiatingGateway_Service",
        (
            Port("InitiatingGateway_Registry", "/ig/registry", (ITI18,)),
            Port("InitiatingGateway_Repository", "/ig/repository", (ITI43,), mtom=True),
        ),
    ),
)

MTOM_POLICY_ID = "MTOM_Policy"


def _q(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}"


def _load_schema(prefix: str) -> etree._Element:
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    return etree.parse(str(SCHEMA_DIR / SCHEMAS[prefix][1]), parser).getroot()


def _imports(schema: etree._Element) -> list[str]:
    by_ns = {ns: prefix for prefix, (ns, _) in SCHEMAS.items()}
    return [by_ns[i.get("namespace")] for i in schema.iter(_q(XSD, "import"))]


def _needed_schemas(ops: list[Operation]) -> list[str]:
    """Schemas the operations use, plus everything they import, in dependency order."""
    order: list[str] = []

    def visit(prefix: str) -> None:
        if prefix in order:
            return
        for dep in _imports(_load_schema(prefix)):
            visit(dep)
        order.append(prefix)

    for op in ops:
        for qname in (op.request, op.response):
            visit(qname.split(":")[0])
    return order


def _inline_schema(prefix: str) -> etree._Element:
    schema = _load_schema(prefix)
    for imp in schema.iter(_q(XSD, "import")):
        imp.attrib.pop("schemaLocation", None)  # resolved from the sibling schema in <types>
    return schema


def build(spec: Wsdl) -> bytes:
    """The WSDL document for ``spec``, as UTF-8 bytes with an XML declaration."""
    ops = [op for port in spec.ports for op in port.operations]
    used = _needed_schemas(ops)
    nsmap = {
        "wsdl": WSDL,
        "soap12": SOAP12,
        "xsd": XSD,
        "wsaw": WSAW,
        "wsam": WSAM,
        "tns": spec.target_namespace,
    }
    nsmap.update({p: SCHEMAS[p][0] for p in used})
    if any(p.mtom for p in spec.ports):
        nsmap.update({"wsp": WSP, "wsu": WSU, "wsoma": MTOM_POLICY})
    root = etree.Element(
        _q(WSDL, "definitions"), nsmap=nsmap, name=spec.name, targetNamespace=spec.target_namespace
    )
    root.append(etree.Comment(" Generated by wsdl/build.py from wsdl/schema/*.xsd; do not edit. "))
    etree.SubElement(root, _q(WSDL, "documentation")).text = spec.documentation

    if any(p.mtom for p in spec.ports):
        policy = etree.SubElement(root, _q(WSP, "Policy"), {_q(WSU, "Id"): MTOM_POLICY_ID})
        etree.SubElement(policy, _q(MTOM_POLICY, "OptimizedMimeSerialization"))

    types = etree.SubElement(root, _q(WSDL, "types"))
    for prefix in used:
        types.append(_inline_schema(prefix))

    seen_messages: set[str] = set()
    for op in ops:
        for stem, element in ((op.message, op.request), (op.message + "Response", op.response)):
            if stem in seen_messages:
                continue
            seen_messages.add(stem)
            msg = etree.SubElement(root, _q(WSDL, "message"), name=f"{stem}_Message")
            etree.SubElement(msg, _q(WSDL, "part"), name="body", element=element)

    for port in spec.ports:
        pt = etree.SubElement(root, _q(WSDL, "portType"), name=f"{port.name}_PortType")
        for op in port.operations:
            o = etree.SubElement(pt, _q(WSDL, "operation"), name=op.name)
            for tag, stem, action in (
                ("input", op.message, op.action),
                ("output", op.message + "Response", op.response_action),
            ):
                etree.SubElement(
                    o,
                    _q(WSDL, tag),
                    {"message": f"tns:{stem}_Message", _q(WSAW, "Action"): action, _q(WSAM, "Action"): action},
                )

    for port in spec.ports:
        b = etree.SubElement(
            root,
            _q(WSDL, "binding"),
            name=f"{port.name}_Binding_Soap12",
            type=f"tns:{port.name}_PortType",
        )
        etree.SubElement(b, _q(SOAP12, "binding"), style="document", transport=HTTP_TRANSPORT)
        etree.SubElement(b, _q(WSAW, "UsingAddressing"), {_q(WSDL, "required"): "true"})
        if port.mtom:
            etree.SubElement(b, _q(WSP, "PolicyReference"), URI=f"#{MTOM_POLICY_ID}")
        for op in port.operations:
            o = etree.SubElement(b, _q(WSDL, "operation"), name=op.name)
            etree.SubElement(o, _q(SOAP12, "operation"), soapAction=op.action, soapActionRequired="false")
            for tag in ("input", "output"):
                etree.SubElement(etree.SubElement(o, _q(WSDL, tag)), _q(SOAP12, "body"), use="literal")

    service = etree.SubElement(root, _q(WSDL, "service"), name=spec.service)
    for port in spec.ports:
        p = etree.SubElement(
            service, _q(WSDL, "port"), name=f"{port.name}_Port_Soap12", binding=f"tns:{port.name}_Binding_Soap12"
        )
        etree.SubElement(p, _q(SOAP12, "address"), location=PLACEHOLDER_ORIGIN + port.path)

    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True, pretty_print=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed WSDL is stale")
    args = parser.parse_args(argv)
    stale = []
    for spec in WSDLS:
        target = HERE / spec.file
        body = build(spec)
        if args.check:
            if not target.is_file() or target.read_bytes() != body:
                stale.append(spec.file)
        else:
            target.write_bytes(body)
            print(f"wrote {target.relative_to(HERE.parent)}")
    if stale:
        print("stale (run python wsdl/build.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
