"""The vocabulary of validation: object kinds, transactions, error codes, the Rule type."""

from __future__ import annotations

from dataclasses import dataclass

from xds_node.ebxml import model as m
from xds_node.ebxml import vocabulary as v

E = v.ErrorCode

# --- object kinds and transactions ----------------------------------------------------------------
SUBMISSION = "Submission"
SUBMISSION_SET = "SubmissionSet"
DOCUMENT_ENTRY = "DocumentEntry"
FOLDER = "Folder"
ASSOCIATION = "Association"
KINDS = (SUBMISSION, SUBMISSION_SET, DOCUMENT_ENTRY, FOLDER, ASSOCIATION)

ITI41 = "ITI-41"
ITI42 = "ITI-42"
#: Transactions this validator serves. Queries never come here: XDSRegistryMetadataError belongs
#: to register / provide-and-register only (ITI TF-3 Table 4.2.4.1-2, transaction columns P and R).
TRANSACTIONS = (ITI41, ITI42)
REGISTER = TRANSACTIONS

#: ITI TF-3 Table 4.2.4.1-2 code that :class:`vocabulary.ErrorCode` does not carry yet.
REGISTRY_DEPRECATED_DOCUMENT_ERROR = "XDSRegistryDeprecatedDocumentError"
#: Every code a rule may raise.
ERROR_CODES = frozenset({c.value for c in E} | {REGISTRY_DEPRECATED_DOCUMENT_ERROR})

META = E.REGISTRY_METADATA_ERROR.value

#: "Actor name indicates where error was detected" (TF-3 Table 4.2.4.1-2): a Document Repository
#: checking an ITI-41 on its own reports the Repository flavour of the generic codes.
_ACTOR_CODES: dict[str, dict[str, str]] = {
    "registry": {},
    "repository": {
        E.REGISTRY_METADATA_ERROR.value: E.REPOSITORY_METADATA_ERROR.value,
        E.REGISTRY_DUPLICATE_UNIQUE_ID.value: E.REPOSITORY_DUPLICATE_UNIQUE_ID.value,
    },
}

_APPROVED = v.Status.APPROVED.value
_DEPRECATED = v.Status.DEPRECATED.value


# --- the rule type ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Rule:
    """One validation rule: what is checked is code, what it is called and raises is this data."""

    id: str
    code: str  # an ErrorCode value (or REGISTRY_DEPRECATED_DOCUMENT_ERROR)
    message: str  # str.format template; {obj} names the offending object
    applies_to: tuple[str, ...]  # object kinds (KINDS)
    transactions: tuple[str, ...] = REGISTER
    reference: str = ""  # where in the Technical Framework the rule comes from

    def applies(self, transaction: str) -> bool:
        return transaction in self.transactions


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken rule on one object, with its message already rendered."""

    rule: Rule
    code: str  # rule.code, mapped for the detecting actor
    object_id: str | None
    message: str

    def to_error(self, location: str | None = None) -> m.RegistryError:
        return m.RegistryError(code=self.code, context=self.message, location=location)
