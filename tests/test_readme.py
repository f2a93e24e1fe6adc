"""The README documents what the code offers: every setting in the Configuration table with its type."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from xds_node.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def _config_rows() -> dict[str, list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Configuration"):]
    section = section[:section.index("\n## ", 5)]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `([a-z_0-9]+)` \|", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in line.strip("|").split("|")]
    return rows


def test_every_setting_has_a_row_with_type_and_default():
    rows = _config_rows()
    fields = [f.name for f in dataclasses.fields(Settings) if f.name != "extra"]
    assert [n for n in fields if n not in rows] == []
    assert [n for n in rows if n not in fields] == []  # no row for a setting that no longer exists
    for name, cells in rows.items():
        assert len(cells) == 4 and all(cells[:3]), (name, cells)
