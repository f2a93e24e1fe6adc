"""IHE rules the registry used to get wrong (issue 12), each driven over HTTP as a Document Source
and a Document Consumer would: identical resubmission of a DocumentEntry uniqueId, and the folders
of a replaced document."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import factories as f
from tests.corpus import assert_valid
from tests.registry.test_register import find_docs, register
from tests.registry.test_stored_queries import _ids, _q
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import Submission
from xds_node.ebxml.validation import assign_uuids

Q = v.StoredQueryId
E = v.ErrorCode
SUCCESS = v.ResponseStatus.SUCCESS
FAILURE = v.ResponseStatus.FAILURE


def _again(first: Submission, pid: str | None = None, *, same_content: bool = True) -> Submission:
    """A new submission (new entryUUIDs, new SubmissionSet) of the first one's document uniqueId."""
    pid = pid or first.documents[0].patient_id
    sub = f.submission(pid, 1)
    de, orig = sub.documents[0], first.documents[0]
    de.unique_id = orig.unique_id
    if same_content:
        de.hash, de.size = orig.hash, orig.size
    return sub


# --- rule 1: identical resubmission -----------------------------------------------------------------
def test_identical_resubmission_is_accepted_as_a_second_entry(client, node):
    """ITI TF-3 Table 4.2.4.1-2 and 4.2.3.2.26: a DocumentEntry with the uniqueId of a registered one
    and the same hash is accepted (XDSDuplicateUniqueIdInRegistry "cannot be thrown for
    DocumentEntry"). The old unique index on xds_document.unique_id refused it. GetDocuments by
    that uniqueId then returns both entries, one patient's, so no XDSResultNotSinglePatient."""
    pid = f.patient(1201)
    first = f.submission(pid, 1)
    assert register(client, first).status == SUCCESS
    second = _again(first)
    reply = register(client, second)
    assert reply.status == SUCCESS, reply.raw
    assert_valid(reply.body)
    uid = first.documents[0].unique_id
    both = sorted([first.documents[0].id, second.documents[0].id])
    got = _q(client, Q.GET_DOCUMENTS, XDSDocumentEntryUniqueId=f"('{uid}')")
    assert got.status == SUCCESS and _ids(got) == both
    assert sorted(d.get("id") for d in find_docs(client, pid).objects("ExtrinsicObject")) == both
    # case of the hash does not make it another document
    third = _again(first)
    third.documents[0].hash = (first.documents[0].hash or "").upper()
    assert register(client, third).status == SUCCESS


def test_resubmission_with_another_hash_is_non_identical_hash(client, node):
    """ITI TF-3 Table 4.2.4.1-2: a uniqueId already registered with a *different* hash is
    XDSNonIdenticalHash (never XDSDuplicateUniqueIdInRegistry for a DocumentEntry), and nothing of
    the submission is registered."""
    pid = f.patient(1202)
    first = f.submission(pid, 1)
    assert register(client, first).status == SUCCESS
    reply = register(client, _again(first, same_content=False))
    assert reply.status == FAILURE
    assert reply.error_codes == [E.NON_IDENTICAL_HASH]
    assert node.registry_store.count("doc") == 1 and node.registry_store.count("ss") == 1


def test_resubmission_with_same_hash_and_another_size_is_non_identical_size(client, node):
    """ITI TF-3 Table 4.2.4.1-2: a duplicate whose size does not match is XDSNonIdenticalSize."""
    first = f.submission(f.patient(1206), 1)
    assert register(client, first).status == SUCCESS
    again = _again(first)
    again.documents[0].size = (first.documents[0].size or 0) + 1
    reply = register(client, again)
    assert reply.status == FAILURE and reply.error_codes == [E.NON_IDENTICAL_SIZE]


def test_resubmission_for_another_patient_is_refused(client, node):
    """The same document registered again stays one patient's document: consent and audit of
    ITI-39/43 look documents up by uniqueId. XDSPatientIdDoesNotMatch (ITI TF-3 Table 4.2.4.1-2)."""
    first = f.submission(f.patient(1203), 1)
    assert register(client, first).status == SUCCESS
    reply = register(client, _again(first, f.patient(1204)))
    assert reply.status == FAILURE and reply.error_codes == [E.PATIENT_ID_DOES_NOT_MATCH]


def test_submission_set_and_folder_uniqueids_stay_unique(client):
    """XDSDuplicateUniqueIdInRegistry still applies to SubmissionSets and Folders (ITI TF-3 Table
    4.2.4.1-2): only DocumentEntries may share a uniqueId."""
    pid = f.patient(1205)
    first = f.submission(pid, 1, with_folder=True)
    assert register(client, first).status == SUCCESS
    again = f.submission(pid, 1, with_folder=True)
    again.submission_set.unique_id = first.submission_set.unique_id  # type: ignore[union-attr]
    again.folders[0].unique_id = first.folders[0].unique_id
    reply = register(client, again)
    assert reply.status == FAILURE
    assert reply.error_codes == [E.DUPLICATE_UNIQUE_ID, E.DUPLICATE_UNIQUE_ID]


def _race(node, first: Submission, second: Submission) -> tuple:
    """Register both so that the second passes validation while the first, already in its
    transaction, has not committed: what validation alone cannot see."""
    registry, store = node.registry, node.registry_store
    in_txn, second_storing = threading.Event(), threading.Event()
    original = store.register

    def storing(sub, **kw):
        if sub is second:
            second_storing.set()  # validated; from here only the database can tell the two apart
        return original(sub, **kw)

    def hold(_conn) -> None:  # runs inside the first registration's transaction
        in_txn.set()
        assert second_storing.wait(30)

    store.register = storing
    try:
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(registry.register, first, also=hold)
            assert in_txn.wait(30)
            b = pool.submit(registry.register, second)
            return a.result(60), b.result(60)
    finally:
        store.register = original


def test_racing_submissions_of_different_content_cannot_both_commit(node):
    """Two submissions of one uniqueId with different hashes, the second validated before the
    first commits: the TF forbids both registered (XDSNonIdenticalHash, ITI TF-3 Table
    4.2.4.1-2). The claim in xds_document_uid makes the second fail with that code; the old unique
    index also stopped it, but as XDSDuplicateUniqueIdInRegistry, which TF-3 forbids for a
    DocumentEntry."""
    first = f.submission(f.patient(1210), 1)
    second = _again(first, same_content=False)
    a, b = _race(node, first, second)
    assert a.status == SUCCESS, a.errors
    assert b.status == FAILURE and [e.code for e in b.errors] == [E.NON_IDENTICAL_HASH]
    assert node.registry_store.count("doc") == 1


def test_racing_identical_submissions_both_commit(node):
    """Identical content racing: both are the same document, so both are accepted (ITI TF-3 Table
    4.2.4.1-2), as they would be one after the other; the old unique index refused the second."""
    first = f.submission(f.patient(1211), 1)
    second = _again(first)
    a, b = _race(node, first, second)
    assert (a.status, b.status) == (SUCCESS, SUCCESS), (a.errors, b.errors)
    assert node.registry_store.count("doc") == 2


# --- rule 2: a replacement joins the original's folders -----------------------------------------------
def _folder_holding(pid: str, doc_id: str) -> Submission:
    """A new Folder to which an already registered document is added (TF-3 4.2.2.1.3)."""
    ss, fd = f.submission_set(pid), f.folder(pid, "Folder02")
    inner = f.has_member(fd.id, doc_id, status=None)
    sub = Submission(submission_set=ss, folders=[fd], associations=[
        f.has_member(ss.id, fd.id, status=None), inner, f.has_member(ss.id, inner.id, status=None)])
    assign_uuids(sub)
    return sub


@pytest.mark.parametrize("kind", [v.AssociationType.RPLC, v.AssociationType.XFRM_RPLC])
def test_replacement_joins_every_folder_of_the_original(client, node, kind):
    """ITI TF-2a 3.42.4.1.3.5, ITI TF-3 4.2.2.2.3: when the replaced DocumentEntry is a member of
    Folders, the registry adds the replacement to those Folders (new HasMember associations, as
    for RPLC so for XFRM_RPLC, which replaces too). The old code only deprecated the original."""
    pid = f.patient(1220)
    first = f.submission(pid, 1, with_folder=True)
    assert register(client, first).status == SUCCESS
    original, folder1 = first.documents[0], first.folders[0]
    second_folder = _folder_holding(pid, original.id)
    assert register(client, second_folder).status == SUCCESS
    folder2 = second_folder.folders[0]
    replacing = f.submission(pid, 1)
    replacement = replacing.documents[0]
    replacing.associations.append(f.relation(kind, replacement.id, original.id))
    reply = register(client, replacing)
    assert reply.status == SUCCESS, reply.raw

    for folder in (folder1, folder2):
        got = _q(client, Q.GET_FOLDER_AND_CONTENTS, XDSFolderEntryUUID=f"'{folder.id}'")
        assert got.status == SUCCESS
        assert _ids(got) == sorted([original.id, replacement.id])  # the original, deprecated, stays
        members = {(a.get("sourceObject"), a.get("targetObject")) for a in got.objects("Association")}
        assert (folder.id, replacement.id) in members
    got = _q(client, Q.GET_FOLDERS_FOR_DOCUMENT, XDSDocumentEntryEntryUUID=f"'{replacement.id}'")
    assert _ids(got, "RegistryPackage") == sorted([folder1.id, folder2.id])
    # the folders were updated: their lastUpdateTime moved on
    for row in node.registry_store.fetch("folder", [folder1.id, folder2.id]):
        assert b"lastUpdateTime" in row.rim


def test_replacement_already_put_in_the_folder_is_not_added_twice(client, node):
    """A source that links the replacement to the folder itself gets no second association from
    the registry (one HasMember per Folder and document)."""
    pid = f.patient(1221)
    first = f.submission(pid, 1, with_folder=True)
    assert register(client, first).status == SUCCESS
    original, folder = first.documents[0], first.folders[0]
    replacing = f.submission(pid, 1)
    replacement, ss = replacing.documents[0], replacing.submission_set
    inner = f.has_member(folder.id, replacement.id, status=None)
    replacing.associations += [f.relation(v.AssociationType.RPLC, replacement.id, original.id), inner,
                               f.has_member(ss.id, inner.id, status=None)]  # type: ignore[union-attr]
    assign_uuids(replacing)
    assert register(client, replacing).status == SUCCESS
    got = _q(client, Q.GET_FOLDER_AND_CONTENTS, XDSFolderEntryUUID=f"'{folder.id}'")
    pairs = [(a.get("sourceObject"), a.get("targetObject")) for a in got.objects("Association")]
    assert pairs.count((folder.id, replacement.id)) == 1


def test_replacement_of_a_document_in_no_folder_adds_no_association(client, node):
    """Nothing to propagate: the registry creates associations only for existing memberships."""
    pid = f.patient(1222)
    first = f.submission(pid, 1)
    assert register(client, first).status == SUCCESS
    replacing = f.submission(pid, 1)
    replacing.associations.append(f.relation(v.AssociationType.RPLC, replacing.documents[0].id,
                                             first.documents[0].id))
    before = node.registry_store.count("assoc")
    assert register(client, replacing).status == SUCCESS
    assert node.registry_store.count("assoc") == before + len(replacing.associations)


def test_identical_multi_document_submissions_in_opposite_order_never_deadlock(node):
    """Submissions that claim the same uniqueIds, listed in opposite orders, race round after round:
    each is the same documents again, so all are accepted (ITI TF-3 Table 4.2.4.1-2); claims are
    taken in one order, so they queue rather than deadlock (which PostgreSQL would end by aborting
    one of them: an XDSRegistryError for a valid submission)."""
    rounds = 30
    for n in range(rounds):
        first = f.submission(f.patient(1230 + n), 2)
        second = f.submission(f.patient(1230 + n), 2)
        for mine, theirs in zip(second.documents, reversed(first.documents), strict=True):
            mine.unique_id, mine.hash, mine.size = theirs.unique_id, theirs.hash, theirs.size
        start = threading.Barrier(2)

        def go(sub, start=start):
            start.wait(30)
            return node.registry.register(sub)

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(go, [first, second]))
        assert [r.status for r in results] == [SUCCESS, SUCCESS], [r.errors for r in results]
    assert node.registry_store.count("doc") == 4 * rounds
