"""ITI-39 Cross Gateway Retrieve, responding side: ITI-43 over the local repository under XCA rules.

Each DocumentRequest must name our community (XDSMissingHomeCommunityId / XDSUnknownCommunity per
document); each DocumentResponse carries our HomeCommunityId; errors name us as location. A
document of a patient who has not opted in, or whose patient our registry cannot name, is answered
like an unknown one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError
from xds_node.registry.service import Registry
from xds_node.repository.service import Repository, RetrieveOutcome
from xds_node.security.trust import normalize_hcid
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.transactions import blocking, iti43, notify

ACTION = v.Action.ITI39
E = v.ErrorCode


@dataclass
class XcaRetrieveResult:
    status: str
    patient_ids: list[str] = field(default_factory=list)
    document_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    withheld: bool = False



def retrieve(repository: Repository, registry: Registry, triples, *, home: str,
             consent: Callable[[str], bool]) -> tuple[RetrieveOutcome, XcaRetrieveResult]:
    def check_home(requested: str | None) -> RegistryError | None:
        if not requested:
            return RegistryError(E.MISSING_HOME_COMMUNITY_ID, "DocumentRequest has no HomeCommunityId", location=home)
        if normalize_hcid(requested) != normalize_hcid(home):
            return RegistryError(E.UNKNOWN_COMMUNITY, f"HomeCommunityId {requested} is not this community",
                                 location=home)
        return None

    result = XcaRetrieveResult(v.ResponseStatus.FAILURE)
    # the documents' patients come with the index rows: one indexed read for both
    outcome = repository.retrieve(triples, location=home, check_home=check_home, owners=True)
    owners = outcome.owners
    withheld = False
    for item in outcome.documents:
        owner = owners.get(item.document_unique_id)
        # a document whose patient the registry cannot name is withheld too (fail closed): with a
        # remote registry (registry_url) our repository alone cannot tell whose it is
        if item.error is None and (owner is None or not consent(owner)):
            item.error = RegistryError(E.DOCUMENT_UNIQUE_ID_ERROR,
                                       f"No document with uniqueId {item.document_unique_id}", location=home)
            item.located = None
            withheld = True
    ok = [d for d in outcome.documents if d.error is None]
    if ok and len(ok) == len(outcome.documents):
        outcome.status = v.ResponseStatus.SUCCESS
    elif ok:
        outcome.status = v.ResponseStatus.PARTIAL_SUCCESS
    else:
        outcome.status = v.ResponseStatus.FAILURE
    result.status = outcome.status
    result.document_ids = [d.document_unique_id for d in ok]
    result.patient_ids = sorted({owners[d.document_unique_id] for d in ok if d.document_unique_id in owners})
    result.errors = [e.code for e in outcome.errors]
    result.withheld = withheld
    return outcome, result


def make_handler(repository: Repository, registry: Registry, *, home: str,
                 consent: Callable[[str], bool],
                 audit: Callable[[SoapRequest, str, Any], Any] | None = None):
    async def handle(req: SoapRequest) -> SoapResponse:
        requests = iti43.read_requests(req.body)
        triples = [(r.repository_unique_id, r.document_unique_id, r.home_community_id) for r in requests]
        outcome, result = await blocking(retrieve, repository, registry, triples, home=home, consent=consent)
        await notify(audit, req, "ITI-39", result)
        return iti43.build_response(v.response_action(ACTION), outcome, home=home)

    return handle
