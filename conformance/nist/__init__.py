"""Read NIST XDS Toolkit testplans and turn their request files into ebRS 3.0 bodies we can send.

A NIST testkit is a tree of ``testplan.xml`` files. Each ``TestStep`` names one transaction
(``StoredQueryTransaction``, ``RegisterTransaction`` ...), a request file with placeholders
(``$patient_id$``, ``$uid$``) and symbolic ids (``Document01``), where the placeholder values come
from (``UseId`` / ``UseReport`` pointing at earlier steps, possibly of other tests) and what the
response must look like (``ExpectedStatus``, ``ExpectedErrorCode``, ``ExpectedContents``,
``Assertions``). The parts, each pure (they read files and build XML, never send anything):

- :mod:`.reader`     testplans -> steps; tests and their sections as NIST runs them (``index.idx``)
- :mod:`.convert`    ebRS 2.1 (XDS.a) request files -> ebRS 3.0
- :mod:`.request`    a step's request with every placeholder resolved; what a step produced
- :mod:`.assertions` NIST ``<Assertions>`` (XPath over the test log) evaluated safely
- :mod:`.seed`       the registry seed standing in for NIST's test-data tests 12346/12374

:mod:`.run` (imported on its own) sends the steps to a target with the harness's runner.
"""

from __future__ import annotations

from .common import PATIENT_ID_SCHEMES, RIM21, RS21, UNIQUE_ID_SCHEMES, UnresolvedReference, parse_xml
from .convert import ASSOCIATION_TYPES_V2, convert_v2_to_v3
from .reader import (
    TRANSACTIONS,
    Expectation,
    NistStep,
    NistTest,
    Report,
    Section,
    UseId,
    UseReport,
    find_tests,
    iter_tests,
    load_testplan,
)
from .request import (
    Context,
    _embedded_submission,
    _literal_ids,
    document_map,
    http_request_body,
    new_oid,
    prepare_request,
    record_result,
    unresolved_placeholders,
)
from .seed import SEED_DIR, SEED_TOML, SeedStep, seed_context, seed_plan

__all__ = [
    "ASSOCIATION_TYPES_V2",
    "PATIENT_ID_SCHEMES",
    "RIM21",
    "RS21",
    "SEED_DIR",
    "SEED_TOML",
    "TRANSACTIONS",
    "UNIQUE_ID_SCHEMES",
    "Context",
    "Expectation",
    "NistStep",
    "NistTest",
    "Report",
    "Section",
    "SeedStep",
    "UnresolvedReference",
    "UseId",
    "UseReport",
    "_embedded_submission",
    "_literal_ids",
    "convert_v2_to_v3",
    "document_map",
    "find_tests",
    "http_request_body",
    "iter_tests",
    "load_testplan",
    "new_oid",
    "parse_xml",
    "prepare_request",
    "record_result",
    "seed_context",
    "seed_plan",
    "unresolved_placeholders",
]
