"""``xds-node demo``: load the bundled sample documents and tell the user how to query them."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from xds_node.ebxml import vocabulary as v


@dataclass
class LoadSummary:
    registered: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    patients: Counter = field(default_factory=Counter)


def load_samples(node, folder: Path) -> LoadSummary:
    """Index the bundled C-CDA samples in place (the folder adapter), as a source system's files."""
    report = node.folder_indexer(folder).sync()
    summary = LoadSummary(registered=len(report.registered) + report.unchanged, rejected=report.rejected)
    with node.engine.connect() as conn:
        from sqlalchemy import select

        from xds_node.registry import tables as rt

        for (pid,) in conn.execute(select(rt.documents.c.patient_id).where(
                rt.documents.c.status == v.Status.APPROVED)):
            summary.patients[pid] += 1
    return summary


FIND_DOCUMENTS_TEMPLATE = """<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"
  xmlns:wsa="http://www.w3.org/2005/08/addressing">
 <env:Header>
  <wsa:Action env:mustUnderstand="1">urn:ihe:iti:2007:RegistryStoredQuery</wsa:Action>
  <wsa:MessageID>urn:uuid:{message_id}</wsa:MessageID>
  <wsa:To>{url}</wsa:To>
 </env:Header>
 <env:Body>
  <query:AdhocQueryRequest xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
    xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">
   <query:ResponseOption returnComposedObjects="true" returnType="LeafClass"/>
   <rim:AdhocQuery id="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d">
    <rim:Slot name="$XDSDocumentEntryPatientId"><rim:ValueList>
     <rim:Value>'{patient}'</rim:Value></rim:ValueList></rim:Slot>
    <rim:Slot name="$XDSDocumentEntryStatus"><rim:ValueList>
     <rim:Value>('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')</rim:Value></rim:ValueList></rim:Slot>
   </rim:AdhocQuery>
  </query:AdhocQueryRequest>
 </env:Body>
</env:Envelope>"""


def find_documents_envelope(url: str, patient: str) -> str:
    xml_patient = patient.replace("&", "&amp;")
    return FIND_DOCUMENTS_TEMPLATE.format(url=url, patient=xml_patient, message_id=uuid.uuid4())


def patient_documents(node, patient: str, limit: int = 8) -> list[tuple[str, str, str]]:
    """(creation date, title, uniqueId) of a patient's Approved documents, newest first: what the
    banner's FindDocuments returns, readable without an XML viewer."""
    from sqlalchemy import select

    from xds_node.ebxml import vocabulary as vv
    from xds_node.registry import tables as rt
    from xds_node.safexml import parser

    t = rt.documents
    stmt = (select(t.c.unique_id, t.c.creation_time, t.c.rim)
            .where(t.c.patient_id == patient, t.c.status == v.Status.APPROVED)
            .order_by(t.c.creation_time.desc()).limit(limit))
    out = []
    with node.engine.connect() as conn:
        for uid, created, fragment in conn.execute(stmt):
            el = etree.fromstring(bytes(fragment), parser())
            name = el.find(f"{{{vv.RIM}}}Name/{{{vv.RIM}}}LocalizedString")
            title = name.get("value", "") if name is not None else ""
            c = created or ""
            out.append((f"{c[:4]}-{c[4:6]}-{c[6:8]}" if len(c) >= 8 else c, title or "(untitled)", uid))
    return out


def print_banner(node, summary: LoadSummary, keys: dict | None = None) -> None:
    urls = node.endpoint_urls()
    print("\nxds-node demo")
    print(f"  data directory : {node.settings.data_dir}")
    print(f"  registered     : {summary.registered} sample documents for {len(summary.patients)} patients")
    for path, reason in summary.rejected:
        print(f"  rejected       : {path}: {reason}")
    print("\nEndpoints (WSDL at <url>?wsdl):")
    for name, url in urls.items():
        print(f"  {name:28} {url}")
    print("\nWho may call each endpoint:")
    print("\n".join(node.access_lines()))
    if summary.patients:
        patient = summary.patients.most_common(1)[0][0]
        url = next(iter(urls.values()))
        request = Path(node.settings.data_dir).resolve() / "find-documents.xml"
        request.write_text(find_documents_envelope(url, patient), encoding="utf-8")
        print(f"\nTry a FindDocuments (ITI-18) for patient {patient}:\n")
        print(f"  curl -s -H 'Content-Type: application/soap+xml; charset=UTF-8' --data-binary @{request} {url}\n")
        docs = patient_documents(node, patient)
        if docs:
            print(f"It answers with {len(docs)} DocumentEntries (ebRIM XML); in short:\n")
            width = max(len(title) for _, title, _ in docs)
            for created, title, uid in docs:
                print(f"  {created:10}  {title:{width}}  {uid}")
            repository = next(u for name, u in urls.items() if name.startswith("repository"))
            print(f"\nFetch one (ITI-43): xds-node retrieve {docs[0][2]} -o doc.xml --url {repository}")
        print("\nOther patients: " + ", ".join(p for p in sorted(summary.patients) if p != patient))
    if keys:
        print("\nThe gateway endpoints (XCA, XCPD) require WS-Security with a SAML assertion signed by a")
        print("partner pinned in partners.toml. The demo partner's key and certificate:")
        print(f"  {keys['demo partner key']}\n  {keys['demo partner certificate']}")
        print("Every sample patient has opted in to sharing "
              f"(xds-node consent show <patient> --data-dir {node.settings.data_dir}).")
    print("Press Ctrl+C to stop.\n", flush=True)
