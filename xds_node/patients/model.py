"""Patient identities and demographics as plain dataclasses.

One shape serves every source (CSV/JSON import, C-CDA recordTarget, XCPD query parameters), so the
matcher compares like with like. Patient ids are kept in the CX form the XDS registry uses
(``ext^^^&root&ISO``) so an XCPD match can be handed straight to an ITI-38 query.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Address",
    "Demographics",
    "Patient",
    "PatientId",
    "cx",
    "digits",
    "normalize_date",
    "normalize_gender",
    "normalize_name",
    "parse_cx",
]


@dataclass(frozen=True)
class PatientId:
    """An HL7 V3 II: ``root`` is the assigning authority OID, ``extension`` the id within it."""

    extension: str
    root: str

    @property
    def cx(self) -> str:
        return cx(self.extension, self.root)


@dataclass
class Address:
    street: list[str] = field(default_factory=list)
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None

    def is_empty(self) -> bool:
        return not (self.street or self.city or self.state or self.postal_code or self.country)


@dataclass
class Demographics:
    """What a partner tells us about a patient, or what we know about one of ours."""

    given: list[str] = field(default_factory=list)
    family: str | None = None
    gender: str | None = None  # HL7 AdministrativeGender: M, F, UN
    birth_date: str | None = None  # YYYYMMDD (or a shorter prefix when only the year/month is known)
    addresses: list[Address] = field(default_factory=list)
    telecoms: list[str] = field(default_factory=list)  # as sent: tel:+1-555..., mailto:...
    ids: list[PatientId] = field(default_factory=list)
    mothers_maiden_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Demographics:
        given = data.get("given") or []
        if isinstance(given, str):
            given = given.split()
        return cls(
            given=[str(g) for g in given if str(g).strip()],
            family=data.get("family") or None,
            gender=normalize_gender(data.get("gender")),
            birth_date=normalize_date(data.get("birth_date")),
            addresses=[Address(**_address_fields(a)) for a in data.get("addresses") or []],
            telecoms=[str(t) for t in data.get("telecoms") or [] if t],
            ids=[PatientId(str(i["extension"]), str(i["root"])) for i in data.get("ids") or []],
            mothers_maiden_name=data.get("mothers_maiden_name") or None,
        )


def _address_fields(a: dict[str, Any]) -> dict[str, Any]:
    street = a.get("street") or []
    if isinstance(street, str):
        street = [street]
    return {
        "street": list(street),
        "city": a.get("city") or None,
        "state": a.get("state") or None,
        "postal_code": a.get("postal_code") or None,
        "country": a.get("country") or None,
    }


@dataclass
class Patient:
    """A patient of our community: the registry's CX patient id plus its demographics."""

    patient_id: str
    demographics: Demographics
    source: str = ""

    @property
    def identifier(self) -> PatientId | None:
        return parse_cx(self.patient_id)


# --- small normalizers shared by the index and the matcher ---------------------------------

_CX = re.compile(r"^(?P<ext>[^^]+)\^\^\^&(?P<root>[0-9]+(?:\.[0-9]+)*)&ISO$")
_NON_ALNUM = re.compile(r"[^A-Z0-9]+")
_GENDERS = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "UN": "UN", "U": "UN", "O": "UN", "UNK": "UN"}


def cx(extension: str, root: str) -> str:
    """The XDS patient id form ``ext^^^&root&ISO``."""
    return f"{extension}^^^&{root}&ISO"


def parse_cx(value: str) -> PatientId | None:
    """``ext^^^&root&ISO`` -> PatientId; None for anything else."""
    m = _CX.match(value.strip()) if value else None
    return PatientId(m["ext"], m["root"]) if m else None


def normalize_name(value: str | None) -> str:
    """Uppercase, accents removed, everything but letters and digits dropped (O'Brien -> OBRIEN)."""
    if not value:
        return ""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_ALNUM.sub("", stripped.upper())


def normalize_gender(value: str | None) -> str | None:
    if not value:
        return None
    return _GENDERS.get(str(value).strip().upper(), "UN")


def normalize_date(value: str | None) -> str | None:
    """HL7 TS or ISO date -> ``YYYYMMDD`` (or its year/month prefix); time and zone are dropped."""
    if not value:
        return None
    d = re.sub(r"[^0-9]", "", str(value).strip()[:10])
    return d[:8] if len(d) >= 4 else None


def digits(value: str | None) -> str:
    """Digits of a phone number (the last 10, so +1 country codes compare equal)."""
    if not value:
        return ""
    return re.sub(r"[^0-9]", "", value)[-10:]
