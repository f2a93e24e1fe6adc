"""Who is asking: the verified identity and claims of an inbound request.

A :class:`Principal` is only ever built from a SAML assertion whose signature checked out against a
pinned partner certificate, so the policy layer can trust every field without re-reading XML.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

#: SNOMED CT, the code system eHealth Exchange uses for ``subject:role``.
SNOMED_CT = "2.16.840.1.113883.6.96"
#: The NHIN purpose-of-use code system ("nhin-purpose").
NHIN_PURPOSE = "2.16.840.1.113883.3.18.7.1"


class CodedValue(NamedTuple):
    """An HL7 CE value as carried in ``hl7:Role`` / ``hl7:PurposeOfUse`` (code, codeSystem, displayName).

    A tuple so a plain ``("TREATMENT", NHIN_PURPOSE, "Treatment")`` works wherever one is expected.
    """

    code: str
    code_system: str
    display: str = ""


@dataclass(frozen=True)
class Principal:
    """The authenticated requester of one message (XSPA / NHIN Authorization Framework claims)."""

    subject_id: str
    organization: str
    organization_id: str
    home_community_id: str
    role: CodedValue
    purpose_of_use: CodedValue
    npi: str | None
    resource_id: str | None
    partner: str
    assertion_id: str
    issuer: str
    name_id: str
    not_on_or_after: datetime
    #: True when this message is a byte-identical resend of one already answered (the peer lost
    #: our answer): it is processed again, consent and audit included, and audited as a resend.
    resend: bool = False
