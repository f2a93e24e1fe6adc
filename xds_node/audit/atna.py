"""AuditEvent -> IHE ATNA / DICOM PS3.15 Annex A.5 ``AuditMessage`` XML (what an ARR expects).

The shape follows the audit message tables of ITI TF-2 for each transaction (ITI-38/39/55 first):

* EventIdentification: ``EventID`` 110112 Query (ITI-18/38/55), 110106 Export / 110107 Import
  (the sending / receiving side of ITI-39/43/41/42), ``EventTypeCode`` = the IHE transaction.
* ActiveParticipant: *Source* (110153) and *Destination* (110152). Data flows from Source to
  Destination, so for a query the initiator is the Source, while for a retrieve the responder is.
  The initiator is the requestor (``UserIsRequestor="true"``), and the human requestor from the
  SAML assertion (XSPA subject-id and role) is added as its own participant.
* AuditSourceIdentification: this node.
* ParticipantObjectIdentification: the patient (type 1, role 1, "Patient Number"), the query
  (type 2, role 24, the transaction code, the stored query id or XCPD query id, the request as
  base64 ``ParticipantObjectQuery`` when known) and each document (type 2, role 3,
  "Report Number", with repository and homeCommunityId details).

``ParticipantObjectDetail/@value`` is ``xs:base64Binary`` in the DICOM schema, hence the encoding.
The message is pure (no I/O) and has no namespace, as DICOM defines it.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
from collections.abc import Sequence
from datetime import UTC
from urllib.parse import urlsplit

from lxml import etree

from xds_node.audit.events import QUERY_TRANSACTIONS, RETRIEVE_TRANSACTIONS, AuditEvent

WSA_ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"

EVENT_QUERY = ("110112", "DCM", "Query")
EVENT_EXPORT = ("110106", "DCM", "Export")
EVENT_IMPORT = ("110107", "DCM", "Import")
ROLE_SOURCE = ("110153", "DCM", "Source Role ID")
ROLE_DESTINATION = ("110152", "DCM", "Destination Role ID")
ID_PATIENT_NUMBER = ("2", "RFC-3881", "Patient Number")
ID_REPORT_NUMBER = ("9", "RFC-3881", "Report Number")
AUDIT_SOURCE_APP_SERVER = ("4", "DCM", "Application Server process tier in a multi-tier system")

DETAIL_QUERY_ENCODING = "QueryEncoding"
DETAIL_XCA_HOME = "urn:ihe:iti:xca:2010:homeCommunityId"  # on ITI-18/38 query objects
DETAIL_HOME = "ihe:homeCommunityID"  # on documents (ITI-39/43) and the ITI-55 query object
DETAIL_REPOSITORY = "Repository Unique Id"


def event_id_code(event: AuditEvent) -> tuple[str, str, str]:
    """DICOM EventID for the event: Query, or Export/Import by the side data leaves/arrives."""
    if event.transaction in QUERY_TRANSACTIONS:
        return EVENT_QUERY
    return EVENT_EXPORT if event.action_code == "R" else EVENT_IMPORT if event.action_code == "C" else EVENT_QUERY


def _coded(parent: etree._Element, tag: str, code: tuple[str, str, str]) -> etree._Element:
    return etree.SubElement(
        parent, tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": code[2] or code[0]}
    )


def _b64(value: str | bytes) -> str:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return base64.b64encode(data).decode("ascii")


def _nap(host: str) -> tuple[str, str] | None:
    """NetworkAccessPointID and its type code: 2 for an IP address, 1 for a machine name."""
    host = (host or "").strip().strip("[]")
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host, "1"
    return host, "2"


def _host_of(url: str) -> str:
    if "://" not in url:
        return ""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _time(event: AuditEvent) -> str:
    t = event.time.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _participant(
    root: etree._Element,
    *,
    user_id: str,
    requestor: bool,
    role: tuple[str, str, str] | None,
    host: str = "",
    alt_user_id: str = "",
    user_name: str = "",
) -> None:
    attrs = {"UserID": user_id or "unknown"}
    if alt_user_id:
        attrs["AlternativeUserID"] = alt_user_id
    if user_name:
        attrs["UserName"] = user_name
    attrs["UserIsRequestor"] = "true" if requestor else "false"
    nap = _nap(host)
    if nap:
        attrs["NetworkAccessPointID"], attrs["NetworkAccessPointTypeCode"] = nap
    ap = etree.SubElement(root, "ActiveParticipant", attrs)
    if role is not None:
        _coded(ap, "RoleIDCode", role)


def _object(
    root: etree._Element,
    *,
    object_id: str,
    type_code: str,
    role: str,
    id_type: tuple[str, str, str],
    query: bytes | None = None,
    details: Sequence[tuple[str, str]] = (),
) -> None:
    attrs = {"ParticipantObjectID": object_id, "ParticipantObjectTypeCode": type_code}
    attrs["ParticipantObjectTypeCodeRole"] = role
    po = etree.SubElement(root, "ParticipantObjectIdentification", attrs)
    _coded(po, "ParticipantObjectIDTypeCode", id_type)
    if query is not None:
        etree.SubElement(po, "ParticipantObjectQuery").text = _b64(query)
    for kind, value in details:
        if value:
            etree.SubElement(po, "ParticipantObjectDetail", {"type": kind, "value": _b64(value)})


def to_dicom_audit_message(
    event: AuditEvent,
    *,
    source_id: str,
    home_community_id: str,
    enterprise_site_id: str | None = None,
    local_host: str | None = None,
    process_id: str | None = None,
) -> bytes:
    """Render ``event`` as a DICOM AuditMessage (UTF-8 bytes with an XML declaration).

    ``source_id`` names this node as audit source (AuditSourceID); ``home_community_id`` is ours
    (the responding community of inbound XCA requests, the initiating one of outbound requests);
    ``local_host`` is our NetworkAccessPointID (default: our endpoint's host or the machine name).
    """
    inbound = event.direction == "inbound"
    tx_code = (event.transaction, "IHE Transactions", event.transaction_name)
    root = etree.Element("AuditMessage")

    # --- EventIdentification ----------------------------------------------------------------------
    ev = etree.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": event.action_code,
            "EventDateTime": _time(event),
            "EventOutcomeIndicator": str(event.outcome_indicator),
        },
    )
    _coded(ev, "EventID", event_id_code(event))
    _coded(ev, "EventTypeCode", tx_code)
    if event.reason:
        etree.SubElement(ev, "EventOutcomeDescription").text = event.reason
    if event.purpose_of_use:
        _coded(
            ev,
            "PurposeOfUse",
            (event.purpose_of_use, event.purpose_of_use_system, event.purpose_of_use_display or event.purpose_of_use),
        )

    # --- ActiveParticipants -----------------------------------------------------------------------
    if inbound:
        us_host = local_host or _host_of(event.endpoint) or socket.gethostname()
        them_host = event.remote_address
        us_endpoint = event.endpoint
        them_endpoint = ""
    else:
        us_host = local_host or socket.gethostname()
        them_host = event.remote_address or _host_of(event.endpoint)
        us_endpoint = ""
        them_endpoint = event.endpoint
    pid = process_id or str(os.getpid())
    partner_name = event.partner_organization or event.partner_organization_id or event.partner_community
    initiator = {
        "user_id": event.reply_to or WSA_ANONYMOUS,
        "requestor": True,
        "host": them_host if inbound else us_host,
        "alt_user_id": "" if inbound else pid,
        "user_name": partner_name if inbound else "",
    }
    responder = {
        "user_id": (us_endpoint if inbound else them_endpoint) or (source_id if inbound else partner_name),
        "requestor": False,
        "host": us_host if inbound else them_host,
        "alt_user_id": pid if inbound else "",
        "user_name": "" if inbound else partner_name,
    }
    if event.transaction in RETRIEVE_TRANSACTIONS:
        # documents flow from the responder (Source) to the initiator (Destination)
        _participant(root, role=ROLE_SOURCE, **responder)
        _participant(root, role=ROLE_DESTINATION, **initiator)
    else:
        _participant(root, role=ROLE_SOURCE, **initiator)
        _participant(root, role=ROLE_DESTINATION, **responder)
    if event.user_subject_id:
        role = None
        if event.user_role_code:
            role = (event.user_role_code, event.user_role_system, event.user_role_display or event.user_role_code)
        _participant(root, user_id=event.user_subject_id, requestor=True, role=role, user_name=event.user_subject_id)

    # --- AuditSourceIdentification ----------------------------------------------------------------
    asi_attrs = {"AuditSourceID": source_id}
    site = enterprise_site_id if enterprise_site_id is not None else home_community_id.removeprefix("urn:oid:")
    if site:
        asi_attrs = {"AuditEnterpriseSiteID": site, **asi_attrs}
    asi = etree.SubElement(root, "AuditSourceIdentification", asi_attrs)
    _coded(asi, "AuditSourceTypeCode", AUDIT_SOURCE_APP_SERVER)

    # --- ParticipantObjects -----------------------------------------------------------------------
    responding_community = home_community_id if inbound else event.partner_community
    initiating_community = event.partner_community if inbound else home_community_id
    if event.patient_id:
        _object(root, object_id=event.patient_id, type_code="1", role="1", id_type=ID_PATIENT_NUMBER)
    if event.transaction in QUERY_TRANSACTIONS:
        if event.transaction == "ITI-55":
            details = [(DETAIL_HOME, initiating_community)]
        else:
            details = [(DETAIL_QUERY_ENCODING, "UTF-8"), (DETAIL_XCA_HOME, responding_community)]
        _object(
            root,
            object_id=event.query_id or event.message_id or "unknown",
            type_code="2",
            role="24",
            id_type=tx_code,
            query=event.query_message,
            details=details,
        )
    if event.transaction in RETRIEVE_TRANSACTIONS:
        for doc_id in event.document_ids:
            _object(
                root,
                object_id=doc_id,
                type_code="2",
                role="3",
                id_type=ID_REPORT_NUMBER,
                details=[(DETAIL_REPOSITORY, event.repository_unique_id or ""), (DETAIL_HOME, responding_community)],
            )
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
