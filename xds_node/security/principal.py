"""Who is asking: the verified identity and claims of an inbound request.

A :class:`Principal` is only ever built from a SAML assertion whose signature checked out against a
pinned certificate, from a pinned TLS client certificate, or (``kind="anonymous"``) by the access
policy for a loopback caller it admits; so the policy layer can trust every field without re-reading
XML. ``kind`` says which of the node's caller kinds it is: ``"partner"`` (an external community,
``partners.toml``), ``"internal"`` (one of our own clients, ``clients.toml``; ``partner`` then holds
the client's name) or ``"anonymous"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

#: SNOMED CT, the code system eHealth Exchange uses for ``subject:role``.
SNOMED_CT = "2.16.840.1.113883.6.96"
#: The NHIN purpose-of-use code system ("nhin-purpose").
NHIN_PURPOSE = "2.16.840.1.113883.3.18.7.1"

#: Caller kinds (``Principal.kind``).
PARTNER = "partner"
INTERNAL = "internal"
ANONYMOUS = "anonymous"
#: The subject-id every admitted anonymous (loopback) caller is recorded under.
ANONYMOUS_SUBJECT = "anonymous@loopback"


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
    kind: str = PARTNER

    #: True when this message is a byte-identical resend of one already answered (the peer lost
    #: our answer): it is processed again, consent and audit included, and audited as a resend.
    resend: bool = False

    @classmethod
    def anonymous(cls, home_community_id: str = "") -> Principal:
        """An unauthenticated loopback caller the access policy chose to admit (demo, local tools)."""
        return cls(subject_id=ANONYMOUS_SUBJECT, organization="", organization_id="",
                   home_community_id=home_community_id, role=_NONE, purpose_of_use=_NONE, npi=None,
                   resource_id=None, partner="", assertion_id="", issuer="", name_id=ANONYMOUS_SUBJECT,
                   not_on_or_after=datetime.max.replace(tzinfo=UTC), kind=ANONYMOUS)

    @classmethod
    def certificate_client(cls, name: str, *, organization: str, organization_id: str, home_community_id: str,
                           issuer: str, not_on_or_after: datetime) -> Principal:
        """An internal client known only by its pinned TLS certificate: it states no person, role or
        purpose, so its name is the subject (the initiating gateway fills the rest from ``ig_*``)."""
        return cls(subject_id=name, organization=organization, organization_id=organization_id,
                   home_community_id=home_community_id, role=_NONE, purpose_of_use=_NONE, npi=None,
                   resource_id=None, partner=name, assertion_id="", issuer=issuer, name_id=name,
                   not_on_or_after=not_on_or_after, kind=INTERNAL)


_NONE = CodedValue("", "", "")
