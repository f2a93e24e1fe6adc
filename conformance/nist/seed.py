"""The registry seed that stands in for NIST's test-data tests (12346, 12374): ``seeds/registry/seed.toml``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .reader import Expectation, NistStep, UseId
from .request import Context

SEED_DIR = Path(__file__).resolve().parents[1] / "seeds" / "registry"
SEED_TOML = SEED_DIR / "seed.toml"

@dataclass
class SeedStep:
    """One submission of our registry seed, standing in for a NIST test-data step."""

    file: Path
    test: str
    section: str
    step: str
    patient: str
    provides: str = ""
    transaction: str = "Register"
    use_ids: list[UseId] = field(default_factory=list)

    @property
    def test_id(self) -> str:
        return f"{self.test}/{self.section}" if self.section else self.test

    def to_step(self) -> NistStep:
        """The seed step as a testplan step, so prepare_request/record_result handle it."""
        return NistStep(
            test_dir=self.file.parent,
            test_id=self.test_id,
            step_id=self.step,
            transaction=self.transaction,
            metadata_file=self.file,
            documents={},
            expectation=Expectation(status="Success"),
            use_ids=list(self.use_ids),
            use_reports=[],
            options={"XDSb": True, "AssignUuids": True, "patient": self.patient},
        )


def _load_seed(path: Path) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def seed_plan(path: Path = SEED_TOML) -> list[SeedStep]:
    """The seed submissions in the order they must be sent."""
    data = _load_seed(path)
    steps = []
    for raw in data.get("step", []):
        seed = SeedStep(
            file=path.parent / raw["file"],
            test=raw["test"],
            section=raw.get("section", ""),
            step=raw["step"],
            patient=raw.get("patient", "$patientid$"),
            provides=raw.get("provides", ""),
            transaction=raw.get("transaction", "Register"),
        )
        for use in raw.get("use_id", []):
            same_test = use.get("test", seed.test) == seed.test
            testdir = f"../{use['section']}" if same_test else f"../../{use['test']}/{use['section']}"
            seed.use_ids.append(UseId(use["id"], use.get("symbol"), use["step"], use["kind"], testdir))
        steps.append(seed)
    return steps


def seed_context(path: Path = SEED_TOML, ctx: Context | None = None) -> Context:
    """A Context preloaded with the seed's fixed values, patient authorities and external reports.

    Existing values in ``ctx`` win, so a caller can pin patient ids or the repository id.
    """
    data = _load_seed(path)
    ctx = ctx or Context()
    for key, value in data.get("values", {}).items():
        ctx.values.setdefault(key, str(value))
    for symbol, spec in data.get("patients", {}).items():
        if isinstance(spec, dict) and "assigning_authority" in spec:
            ctx.assigning_authorities.setdefault(symbol, spec["assigning_authority"])
    for rep in data.get("report", []):
        test_key = f"{rep['test']}/{rep['section']}" if rep.get("section") else rep["test"]
        ctx.reports.setdefault((test_key, rep["step"], rep["name"]), str(rep["value"]))
    return ctx
