"""``xds-node demo``: load the bundled sample documents and tell the user how to query them."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import Association, Author, Code, DocumentEntry, Submission, SubmissionSet
from xds_node.ebxml.rim import new_uuid
from xds_node.registry.service import now_dtm


@dataclass
class LoadSummary:
    registered: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    patients: Counter = field(default_factory=Counter)


def submission_for(entry: DocumentEntry, *, source_id: str, content_type: Code | None = None) -> Submission:
    """Wrap one DocumentEntry in a SubmissionSet the way a Document Source would."""
    ss = SubmissionSet(
        id=new_uuid(),
        unique_id=f"2.25.{int.from_bytes(hashlib.sha1(entry.id.encode()).digest()[:12], 'big')}",
        source_id=source_id,
        patient_id=entry.patient_id,
        submission_time=now_dtm(),
        content_type_code=content_type or entry.class_code or entry.type_code,
        authors=[Author(person=a.person, institutions=list(a.institutions)) for a in entry.authors[:1]],
    )
    ss.title = []
    link = Association(id=new_uuid(), association_type=v.AssociationType.HAS_MEMBER, source=ss.id,
                       target=entry.id, submission_set_status="Original")
    return Submission(submission_set=ss, documents=[entry], associations=[link])


def load_samples(node, folder: Path) -> LoadSummary:
    """Register the metadata of every C-CDA in ``folder`` (size/hash computed from the bytes)."""
    summary = LoadSummary()
    try:
        from xds_node.cda import CdaError, extract_metadata
    except ImportError:  # pragma: no cover - the cda package ships with the node
        return summary
    for path in sorted(folder.rglob("*.xml")):
        data = path.read_bytes()
        try:
            entry = extract_metadata(data, source_name=path.name)
        except CdaError as exc:
            summary.rejected.append((str(path), str(exc)))
            continue
        entry.id = new_uuid()
        entry.size = len(data)
        entry.hash = hashlib.sha1(data).hexdigest()
        entry.repository_unique_id = node.settings.repository_unique_id
        response = node.registry.register(submission_for(entry, source_id=node.settings.registry_unique_id))
        if response.status == v.ResponseStatus.SUCCESS:
            summary.registered += 1
            summary.patients[entry.patient_id] += 1
        else:
            summary.rejected.append((str(path), "; ".join(e.context for e in response.errors)))
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


def print_banner(node, summary: LoadSummary) -> None:
    urls = node.endpoint_urls()
    print("\nxds-node demo")
    print(f"  data directory : {node.settings.data_dir}")
    print(f"  registered     : {summary.registered} sample documents for {len(summary.patients)} patients")
    for path, reason in summary.rejected:
        print(f"  rejected       : {path}: {reason}")
    print("\nEndpoints (WSDL at <url>?wsdl):")
    for name, url in urls.items():
        print(f"  {name:28} {url}")
    if summary.patients:
        patient = summary.patients.most_common(1)[0][0]
        url = next(iter(urls.values()))
        request = Path(node.settings.data_dir).resolve() / "find-documents.xml"
        request.write_text(find_documents_envelope(url, patient), encoding="utf-8")
        print(f"\nTry a FindDocuments (ITI-18) for patient {patient}:\n")
        print(f"  curl -s -H 'Content-Type: application/soap+xml; charset=UTF-8' --data-binary @{request} {url}\n")
        print("Other patients: " + ", ".join(p for p in sorted(summary.patients) if p != patient))
    print("Press Ctrl+C to stop.\n", flush=True)
