"""The NIST testkit reader: testplans load, ebRS 2.1 converts, every query step can be prepared."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from conformance import nist
from tests.corpus import CORPUS, assert_valid, requires_corpus
from xds_node.ebxml import vocabulary as v

TESTKIT = CORPUS / "03-messages" / "nist-testkit"
NEGATIVE = CORPUS / "05-negative" / "nist-testkit"
FOLDERS = (TESTKIT, NEGATIVE)
SEED_TESTS = ("11897", "11898", "11899", "11901", "11902", "11903", "11904", "11905", "11906", "11907",
              "11908", "11909", "12368")  # fmt: skip
RIM = f"{{{v.RIM}}}"


def _all_steps() -> list[nist.NistStep]:
    return [s for folder in FOLDERS for s in nist.iter_tests(folder)]


def _run(steps: list[nist.NistStep], ctx: nist.Context) -> dict[tuple[str, str], etree._Element]:
    """Prepare every query/submission step, recording results as if each succeeded.

    Retrieve/XCA steps are left out: they need values from responses (repositoryUniqueId reports)
    or from NIST test 12318, which the corpus does not carry.
    """
    bodies = {}
    for step in steps:
        if step.transaction == "Http":
            nist.record_result(step, ctx, None, None)  # a raw captured body: ids are read from it
            continue
        if step.transaction not in ("StoredQuery", "Register", "ProvideAndRegister"):
            continue
        body = nist.prepare_request(step, ctx)
        nist.record_result(step, ctx, body, None)
        bodies[(step.test_id, step.step_id)] = body
    return bodies


def _seeded_context() -> nist.Context:
    ctx = nist.seed_context()
    for seed in nist.seed_plan():
        step = seed.to_step()
        body = nist.prepare_request(step, ctx)
        nist.record_result(step, ctx, body, None)
    return ctx


# --- loading ----------------------------------------------------------------------------------------
@requires_corpus
def test_every_testplan_loads():
    plans = [p for folder in FOLDERS for p in folder.rglob("testplan.xml")]
    steps = _all_steps()
    assert len(plans) > 150
    assert {s.test_dir for s in steps} == {p.parent for p in plans}
    missing = []
    for step in steps:
        assert step.step_id
        if step.metadata_file is not None and not step.metadata_file.is_file():
            missing.append(step)
        for path in step.documents.values():
            assert path.is_file(), path
    # the corpus lacks one XCPD request file (15500/findpatient_dob_gender_name2); nothing else
    assert [(s.test_id, s.transaction) for s in missing] == [("15500/findpatient_dob_gender_name2", "Xcpd")]
    sq = [s for s in steps if s.transaction == "StoredQuery"]
    assert len(sq) >= 90 and all(s.metadata_file or s.inline_metadata is not None for s in sq)


@requires_corpus
def test_testplan_details_are_parsed():
    leaf = nist.load_testplan(NEGATIVE / "tests" / "12368" / "doc_leafclass")[0]
    assert (leaf.test_id, leaf.step_id, leaf.transaction) == ("12368/doc_leafclass", "leafclass", "StoredQuery")
    assert leaf.expectation.status == "Failure"
    assert leaf.expectation.error_codes == ["XDSResultNotSinglePatient"]
    assert leaf.expectation.contents == {"Documents": 0}
    assert leaf.options["sq"] == "GetDocuments" and leaf.options["XDSb"] is True
    expected_use = nist.UseId("Document01", "$uuid2$", "submit_doc", "AssignedUuids", "../../12374/submit_doc")
    assert leaf.use_ids[1] == expected_use

    ss = nist.load_testplan(TESTKIT / "tests" / "11906" / "folder_and_docs")[0]
    assert ss.expectation.contents == {"SSwithTwoDocOneFol": True}
    edge = nist.load_testplan(TESTKIT / "tests" / "11897" / "creationtime_right_edge")[0]
    assert edge.expectation.contents == {"None": True}

    two = nist.load_testplan(TESTKIT / "tests" / "11902" / "uuid")
    assert [s.transaction for s in two] == ["StoredQuery", "Null"]
    assert two[0].expectation.contents == {"SubmissionSets": 0, "Associations": 0, "Documents": 0, "Folders": 2}

    submit = nist.load_testplan(NEGATIVE / "tests" / "11997" / "submit")[0]
    assert submit.options["NoPatientId"] is True
    assert submit.expectation.error_codes == ["XDSPatientIdDoesNotMatch"]
    assert [u.test for u in submit.use_reports] == ["15817", "15817b"]

    repo = nist.load_testplan(TESTKIT / "testdata-repository" / "Test Data - Repository")
    assert repo[0].test_id == "Test Data - Repository"
    assert repo[2].documents.keys() == {"Document01", "Document02"}


@requires_corpus
def test_tests_are_the_sections_index_idx_lists():
    """NIST runs the sections index.idx names, in order, and only those (find_tests); iter_tests still
    reads every testplan of the corpus."""
    tests = {t.id: t for t in nist.find_tests(TESTKIT / "tests")}
    assert [s.name for s in tests["12021"].sections] == ["submit", "query", "retrieve"]
    assert "no_matching_classcode" not in [s.name for s in tests["11897"].sections]
    assert tests["11897"].ignored == ["section no_matching_classcode (not listed in index.idx)"]
    assert [s.name for s in tests["11966"].sections] == ["submit", "eval"]  # patientFeed is not listed
    assert [s.name for s in tests["12308"].sections] == ["retrieve_one"]
    assert [s.name for s in tests["PnrXop"].sections] == ["patientFeed", "Xop", "NoXop", "encodedURL", "dicom"]
    assert all(s.test_id == f"{t.id}/{sec.name}" for t in tests.values() for sec in t.sections for s in sec.steps)
    verify = tests["11902"].sections[0].steps[1]
    assert verify.transaction == "Null" and [a.id for a in verify.asserts] == ["availabilityStatus"]
    assert verify.data_refs == ["THIS as output"]
    xcr = tests["12312"].sections[0].steps[0]
    assert [a.id for a in xcr.asserts] == ["OneDocument", "HomeCommunityId", "RepositoryUniqueId"]
    assert "$home$" in xcr.asserts[1].xpath


@requires_corpus
def test_sections_follow_index_order():
    ids = [s.test_id for s in nist.iter_tests(TESTKIT / "tests" / "12021")]
    assert ids == ["12021/submit", "12021/query", "12021/retrieve"]


# --- ebRS 2.1 -> 3.0 ------------------------------------------------------------------------------------
def _v21_files() -> list[Path]:
    found = []
    for folder in FOLDERS:
        for path in folder.rglob("*.xml"):
            if path.name != "testplan.xml" and nist.RS21.encode() in path.read_bytes()[:400]:
                found.append(path)
    return found


@requires_corpus
def test_every_v21_file_converts_to_valid_ebrs30():
    files = _v21_files()
    assert len(files) > 70
    for path in files:
        src = nist.parse_xml(path)
        out = nist.convert_v2_to_v3(src)
        assert etree.QName(out).text == f"{{{v.LCM}}}SubmitObjectsRequest"
        assert nist.RIM21.encode() not in etree.tostring(out)
        assert_valid(out)
        # nothing lost: same number of registry objects (ObjectRefs aside)
        kinds = ("ExtrinsicObject", "RegistryPackage", "Association", "Classification", "ExternalIdentifier")
        for kind in kinds:
            assert len(out.findall(f".//{RIM}{kind}")) == len(src.findall(f".//{{{nist.RIM21}}}{kind}")), (path, kind)
        for ext in out.iter(f"{RIM}ExternalIdentifier"):
            assert ext.get("registryObject") == ext.getparent().get("id")
        for assoc in out.iter(f"{RIM}Association"):
            assert assoc.get("associationType").startswith("urn:")


V21 = b"""<rs:SubmitObjectsRequest xmlns:rs="urn:oasis:names:tc:ebxml-regrep:registry:xsd:2.1">
 <rim:LeafRegistryObjectList xmlns:rim="urn:oasis:names:tc:ebxml-regrep:rim:xsd:2.1">
  <rim:ObjectRef id="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b518fff"/>
  <rim:ExtrinsicObject id="Document01" mimeType="text/plain" majorVersion="1"
      objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1">
   <rim:Name><rim:LocalizedString value="DocA" charset="UTF-8"/></rim:Name>
   <rim:Description/>
   <rim:Slot name="creationTime"><rim:ValueList><rim:Value>20061224</rim:Value></rim:ValueList></rim:Slot>
   <rim:Classification classifiedObject="Document01" nodeRepresentation=""
       classificationScheme="urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d">
    <rim:Slot name="authorPerson"><rim:ValueList><rim:Value>^Ford^Eleanor</rim:Value></rim:ValueList></rim:Slot>
   </rim:Classification>
   <rim:ExternalIdentifier value="Document01" identificationScheme="urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab">
    <rim:Name><rim:LocalizedString value="XDSDocumentEntry.uniqueId"/></rim:Name>
   </rim:ExternalIdentifier>
  </rim:ExtrinsicObject>
  <rim:Classification classifiedObject="SubmissionSet01"
      classificationNode="urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"/>
  <rim:Association sourceObject="SubmissionSet01" targetObject="Document01" associationType="HasMember"/>
  <rim:Association sourceObject="Document01" targetObject="urn:uuid:0b5a5b15-0000-4000-8000-000000000001"
      associationType="RPLC"/>
 </rim:LeafRegistryObjectList>
</rs:SubmitObjectsRequest>"""


def test_converter_rewrites_the_2_1_shapes():
    out = nist.convert_v2_to_v3(nist.parse_xml(V21))
    lst = out[0]
    assert etree.QName(lst).text == f"{RIM}RegistryObjectList"
    kinds = [etree.QName(c).localname for c in lst]
    assert kinds == ["ExtrinsicObject", "Classification", "Association", "Association"]
    eo = lst[0]
    # 3.0 order: Slot, Name, (empty Description dropped), Classification, ExternalIdentifier
    assert [etree.QName(c).localname for c in eo] == ["Slot", "Name", "Classification", "ExternalIdentifier"]
    assert eo.get("majorVersion") is None and eo.get("id") == "Document01"
    assert eo.find(f"{RIM}Name/{RIM}LocalizedString").get("charset") == "UTF-8"
    ext = eo.find(f"{RIM}ExternalIdentifier")
    assert ext.get("registryObject") == "Document01" and ext.get("id").startswith("urn:uuid:")
    assert [a.get("associationType") for a in lst.findall(f"{RIM}Association")] == [
        "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember",
        "urn:ihe:iti:2007:AssociationType:RPLC",
    ]
    assert all(a.get("id") for a in lst.iter(f"{RIM}Association", f"{RIM}Classification"))
    kept = nist.convert_v2_to_v3(nist.parse_xml(V21), keep_object_refs=True)
    assert kept[0][0].get("id") == "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b518fff"


def test_converter_leaves_3_0_alone_and_refuses_sql_queries():
    q = b'<query:AdhocQueryRequest xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"/>'
    assert etree.tostring(nist.convert_v2_to_v3(nist.parse_xml(q))) == etree.tostring(nist.parse_xml(q))
    sql = b'<rs:AdhocQueryRequest xmlns:rs="urn:oasis:names:tc:ebxml-regrep:registry:xsd:2.1"/>'
    with pytest.raises(ValueError, match="SQL"):
        nist.convert_v2_to_v3(nist.parse_xml(sql))


def test_parser_rejects_doctype():
    with pytest.raises((ValueError, etree.XMLSyntaxError)):
        nist.parse_xml(b'<!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>')


# --- preparing requests ---------------------------------------------------------------------------------
@requires_corpus
def test_every_stored_query_step_prepares_to_a_valid_query():
    ctx = _seeded_context()
    bodies = {}
    for folder in FOLDERS:
        tests_dir = folder / "tests"
        for test in sorted(p for p in tests_dir.iterdir() if p.is_dir()):
            bodies.update(_run([s for s in nist.iter_tests(test)], ctx))
    sq = [s for s in _all_steps() if s.transaction == "StoredQuery" and "/tests/" in str(s.test_dir)]
    assert len(sq) >= 90
    for step in sq:
        body = bodies[(step.test_id, step.step_id)]
        assert etree.QName(body).text == f"{{{v.QUERY}}}AdhocQueryRequest"
        assert not nist.unresolved_placeholders(body), step.test_id
        assert_valid(body)
    # spot checks: the values really come from where the testplan says
    d1 = ctx.assigned[("12346/single_doc", "submit_doc")]
    body = bodies[("11901/uuid2", "uuid2")]
    assert body.findtext(f".//{RIM}Value") == (
        f"('{d1['AssignedUuids']['Document01']}', "
        f"'{ctx.assigned[('12346/two_doc_w_fol', 'submit_2doc_w_fol')]['AssignedUuids']['Document02']}')"
    )
    pid_slot = f".//{RIM}Slot[@name='$XDSDocumentEntryPatientId']//{RIM}Value"
    patient = bodies[("11897/approved", "leafclass")].findtext(pid_slot)
    assert patient == f"'{ctx.values['$patientid$']}'"
    eval_ss = bodies[("11966/eval", "eval")].findtext(f".//{RIM}Value")
    assert eval_ss == f"'{ctx.assigned[('11966/submit', 'submit')]['AssignedUids']['SubmissionSet01']}'"
    now = bodies[("11899/in_updatetime", "in_updatetime")].find(
        f".//{RIM}Slot[@name='$XDSFolderLastUpdateTimeTo']//{RIM}Value"
    )
    assert now.text.isdigit() and len(now.text) == 14


@requires_corpus
def test_every_submission_step_prepares_to_valid_ebrs30():
    ctx = _seeded_context()
    count = 0
    for folder in FOLDERS:
        for test in sorted(p for p in folder.iterdir() if p.is_dir()):
            for sub in sorted(p for p in test.iterdir() if p.is_dir()):
                steps = [s for s in nist.iter_tests(sub) if s.transaction in ("Register", "ProvideAndRegister")]
                for step in steps:
                    if step.options.get("ParseMetadata") == "False":
                        continue
                    try:
                        body = nist.prepare_request(step, ctx)
                    except nist.UnresolvedReference:
                        continue  # depends on a step of a test the corpus does not carry
                    nist.record_result(step, ctx, body, None)
                    assert etree.QName(body).text == f"{{{v.LCM}}}SubmitObjectsRequest"
                    assert_valid(body)
                    count += 1
    assert count > 60


@requires_corpus
def test_no_patient_id_step_takes_both_patients_from_reports():
    ctx = _seeded_context()
    step = nist.load_testplan(NEGATIVE / "tests" / "11997" / "submit")[0]
    body = nist.prepare_request(step, ctx)
    ids = {e.get("identificationScheme"): e.get("value") for e in body.iter(f"{RIM}ExternalIdentifier")}
    assert ids[v.SS_PATIENT_ID] == ctx.values["$patientid$"]
    assert ids[v.DOC_PATIENT_ID] == ctx.values["$altpatientid$"] != ctx.values["$patientid$"]


@requires_corpus
def test_provide_and_register_documents_follow_assigned_ids():
    ctx = nist.Context()
    step = nist.load_testplan(TESTKIT / "testdata-repository" / "Test Data - Repository")[2]
    body = nist.prepare_request(step, ctx)
    docs = nist.document_map(step, ctx)
    entry_ids = {eo.get("id") for eo in body.iter(f"{RIM}ExtrinsicObject")}
    assert set(docs) == entry_ids and all(i.startswith("urn:uuid:") for i in entry_ids)
    assert {p.name for p in docs.values()} == {"my_document.txt", "my_document2.txt"}
    nist.record_result(step, ctx, body, None)
    assert ctx.reports[("Test Data - Repository", "submit_2doc_w_fol", "Document02_uid")].startswith("2.25.")


def test_unresolved_use_id_is_reported():
    step = nist.NistStep(
        test_dir=Path("."), test_id="1/a", step_id="s", transaction="StoredQuery", metadata_file=None,
        documents={}, expectation=nist.Expectation(), use_ids=[nist.UseId("Document01", "$u$", "x", "AssignedUuids")],
        use_reports=[], options={},
    )  # fmt: skip
    with pytest.raises(nist.UnresolvedReference, match="Document01"):
        nist.Context().lookup_id("1/a", step.use_ids[0])


@requires_corpus
def test_report_xpath_reads_the_request():
    ctx = nist.seed_context()
    step = nist.load_testplan(TESTKIT / "tests" / "12000" / "submit")[0]
    body = nist.prepare_request(step, ctx)
    nist.record_result(step, ctx, body, None)
    folder_uid = ctx.assigned[("12000/submit", "submit_doc_w_fol")]["AssignedUids"]
    assert ctx.reports[("12000/submit", "submit_doc_w_fol", "foluid")] in folder_uid.values()
    assert ctx.reports[("12000/submit", "submit_doc_w_fol", "folid")].startswith("urn:uuid:")


# --- the registry seed --------------------------------------------------------------------------------
def test_seed_plan_order_and_files():
    plan = nist.seed_plan()
    assert [s.test_id for s in plan] == [
        "12346/single_doc", "12346/doc_w_fol", "12346/two_doc_w_fol", "12346/doc_for_rplc", "12346/rplc",
        "12374/submit_doc", "12374/submit_doc_w_fol",
    ]  # fmt: skip
    assert all(s.file.is_file() for s in plan)
    assert plan[4].use_ids[0].testdir == "../doc_for_rplc"


@requires_corpus
def test_seed_files_are_valid_and_fully_resolved():
    ctx = nist.seed_context()
    rplc_body = None
    for seed in nist.seed_plan():
        assert_valid(nist.parse_xml(seed.file))
        step = seed.to_step()
        body = nist.prepare_request(step, ctx)
        nist.record_result(step, ctx, body, None)
        assert_valid(body)
        if seed.step == "rplc":
            rplc_body = body
        assert not nist.unresolved_placeholders(body)
        for obj in body.iter(f"{RIM}ExtrinsicObject", f"{RIM}RegistryPackage", f"{RIM}Association"):
            assert obj.get("id").startswith("urn:uuid:")
        for ext in body.iter(f"{RIM}ExternalIdentifier"):
            if ext.get("identificationScheme") in nist.UNIQUE_ID_SCHEMES:
                assert ext.get("value").startswith("2.25.")
            if ext.get("identificationScheme") in nist.PATIENT_ID_SCHEMES:
                assert ext.get("value") == ctx.values[seed.patient]
    assert rplc_body is not None
    rplc = rplc_body.find(f".//{RIM}Association[@associationType='{v.AssociationType.RPLC}']")
    d5 = ctx.assigned[("12346/doc_for_rplc", "doc_for_rplc")]["AssignedUuids"]["Document01"]
    d6 = ctx.assigned[("12346/rplc", "rplc")]["AssignedUuids"]["Document01"]
    assert (rplc.get("sourceObject"), rplc.get("targetObject")) == (d6, d5)
    assert ctx.values["$patientid$"] != ctx.values["$altpatientid$"]


def _seed_objects() -> tuple[list[dict], list[dict], list[dict]]:
    """Documents / submission sets / folders of the 12346 seed (patient $patientid$) as plain dicts."""
    ctx = nist.seed_context()
    docs, sets, folders, replaced = [], [], [], set()
    for seed in nist.seed_plan():
        step = seed.to_step()
        body = nist.prepare_request(step, ctx)
        nist.record_result(step, ctx, body, None)
        if seed.test != "12346":
            continue
        for assoc in body.iter(f"{RIM}Association"):
            if assoc.get("associationType") == v.AssociationType.RPLC:
                replaced.add(assoc.get("targetObject"))
        for eo in body.iter(f"{RIM}ExtrinsicObject"):
            codes: dict[str, set[str]] = {}
            for cl in eo.iter(f"{RIM}Classification"):
                system = cl.findtext(f"{RIM}Slot[@name='codingScheme']//{RIM}Value")
                codes.setdefault(cl.get("classificationScheme"), set()).add(f"{cl.get('nodeRepresentation')}^^{system}")
            slots = {s.get("name"): [x.text for x in s.iter(f"{RIM}Value")] for s in eo.findall(f"{RIM}Slot")}
            authors = {
                x.text for s in eo.iter(f"{RIM}Slot") if s.get("name") == "authorPerson" for x in s.iter(f"{RIM}Value")
            }
            docs.append({"id": eo.get("id"), "codes": codes, "slots": slots, "authors": authors})
        for rp in body.iter(f"{RIM}RegistryPackage"):
            node = body.find(f".//{RIM}Classification[@classifiedObject='{rp.get('id')}'][@classificationNode]")
            target = folders if node.get("classificationNode") == v.FOLDER_NODE else sets
            target.append({"id": rp.get("id"), "xml": etree.tostring(rp).decode()})
    for doc in docs:
        doc["status"] = "Deprecated" if doc["id"] in replaced else "Approved"
    return docs, sets, folders


def _count(docs, status=("Approved",), scheme=None, any_of=(), all_of=(), slot=None, lo=None, hi=None, author=None):
    n = 0
    for d in docs:
        if d["status"] not in status:
            continue
        codes = d["codes"].get(scheme, set()) if scheme else set()
        if any_of and not codes & set(any_of):
            continue
        if all_of and not set(all_of) <= codes:
            continue
        if slot:
            value = (d["slots"].get(slot) or [""])[0]
            if (lo and value.ljust(14, "0") < lo.ljust(14, "0")) or (hi and value.ljust(14, "0") >= hi.ljust(14, "0")):
                continue
        if author and not any(author in a for a in d["authors"]):
            continue
        n += 1
    return n


def test_seed_meets_the_find_queries_expected_counts():
    """A tiny model of FindDocuments/FindSubmissionSets/FindFolders over the seed, against 11897-11899.

    It does not replace the real registry; it guards the seed data itself, so a count mismatch
    later points at the registry, not at the data.
    """
    docs, sets, folders = _seed_objects()
    ad = ("Approved", "Deprecated")
    cls, conf, fmt = v.DOC_CLASS_CODE, v.DOC_CONFIDENTIALITY_CODE, v.DOC_FORMAT_CODE
    hcft, ps = v.DOC_HEALTHCARE_FACILITY_TYPE_CODE, v.DOC_PRACTICE_SETTING_CODE
    ev, typ = v.DOC_EVENT_CODE, v.DOC_TYPE_CODE
    s6 = "1.3.6.1.4.1.19376.1.2.6.1"
    ct, sn = "1.3.6.1.4.1.21367.2017.3", "2.16.840.1.113883.6.96"
    assert len(docs) == 6 and len(sets) == 5 and len(folders) == 2
    expected = {
        "approved": (_count(docs), 5),
        "leafclass/objectref": (_count(docs, ad), 6),
        "deprecated": (_count(docs, ("Deprecated",)), 1),
        "author": (_count(docs, author="Ford"), 1),
        "classcode_one": (_count(docs, scheme=cls, any_of=[f"DISPENSATIONS^^{s6}"]), 1),
        "classcode_two": (_count(docs, ad, scheme=cls, any_of=[f"DISPENSATIONS^^{s6}", f"REPORTS^^{s6}"]), 3),
        "classcode_scheme_2": (_count(docs, scheme=cls, any_of=[f"SUMMARIES^^{s6}", f"HEALTH^^{s6}"]), 2),
        "confcode": (_count(docs, scheme=conf, any_of=["V^^2.16.840.1.113883.5.25", "R^^2.16.840.1.113883.5.25"]), 2),
        "formatcode": (_count(docs, scheme=fmt, any_of=["urn:ihe:rad:TEXT^^1.3.6.1.4.1.19376.1.2.3"]), 4),
        "hcftc": (_count(docs, scheme=hcft, any_of=[f"264372000^^{sn}", f"66280005^^{sn}"]), 3),
        "hcftc_scheme": (_count(docs, scheme=hcft, any_of=[f"264372000^^{sn}"]), 2),
        "practicesetting": (_count(docs, scheme=ps, any_of=[f"Practice-D^^{ct}", f"Practice-G^^{ct}"]), 3),
        "practicesetting_scheme": (_count(docs, scheme=ps, any_of=[f"Practice-D^^{ct}"]), 2),
        "creationtime_between": (_count(docs, slot="creationTime", lo="20040101", hi="20050101"), 1),
        "creationtime_left_edge": (_count(docs, slot="creationTime", lo="20041224", hi="20050101"), 1),
        "creationtime_right_edge": (_count(docs, slot="creationTime", lo="20041124", hi="20041224"), 0),
        "servicestarttime": (_count(docs, slot="serviceStartTime", lo="2005", hi="2006"), 2),
        "typecode": (_count(docs, scheme=typ, any_of=[f"11369-6^^{'2.16.840.1.113883.6.1'}"]), 5),
        "eventcode": (_count(docs, scheme=ev, any_of=[f"urn:connectathon:policy:deny-access^^{ct}"]), 1),
        "and": (_count(docs, scheme=ev, all_of=[f"urn:connectathon:bppc:foundational:policy^^{ct}",
                                                  f"urn:connectathon:policy:full-access^^{ct}"]), 1),
    }  # fmt: skip
    # the two-slot AND must really narrow: one slot alone matches more
    assert _count(docs, scheme=ev, any_of=[f"urn:connectathon:bppc:foundational:policy^^{ct}"]) == 2
    both = [d for d in docs if d["status"] == "Approved" and f"SUMMARIES^^{s6}" in d["codes"].get(cls, set())]
    assert [f"309927009^^{sn}" in d["codes"][ps] for d in both] == [True]  # classcode_practicesetting
    d_2002_2006 = [
        d for d in docs
        if d["status"] == "Approved" and f"Practice-D^^{ct}" in d["codes"][ps]
        and "20020101" <= d["slots"]["creationTime"][0] < "20060101"
    ]  # fmt: skip
    assert len(d_2002_2006) == 1  # creationtime_practicesetting
    refs = [d for d in docs if "urn:ihe:iti:xds:2013:referenceIdList" in d["slots"]]
    assert len(refs) == 1 and refs[0]["slots"]["urn:ihe:iti:xds:2013:referenceIdList"] == [
        "20061223^^^&1.2.5643.2&ISO^urn:ihe:iti:xds:2013:uniqueId"
    ]
    assert {k: got for k, (got, _) in expected.items()} == {k: want for k, (_, want) in expected.items()}
    for ss in sets:  # 11898: all five by author, content type and December 2004 submission time
        assert "Dopplemeyer" in ss["xml"] and "Smith" not in ss["xml"]
        assert 'nodeRepresentation="225728007"' in ss["xml"] and "66280005" not in ss["xml"]
        assert "<rim:Value>200412" in ss["xml"] and "1.2.669847365.352.1" not in ss["xml"]
    for folder in folders:  # 11899 codelist
        assert 'nodeRepresentation="Referrals"' in folder["xml"]


def test_readme_lists_every_seeded_stored_query_step():
    readme = (nist.SEED_DIR / "README.md").read_text()
    if not CORPUS.is_dir():
        pytest.skip("corpus not present")
    for folder in FOLDERS:
        for test in SEED_TESTS:
            if not (folder / "tests" / test).is_dir():
                continue
            for step in nist.iter_tests(folder / "tests" / test):
                if step.transaction == "StoredQuery":
                    assert f"`{step.test_id}` | {step.step_id} |" in readme, step.test_id
