"""docs/threat-model.md names, for each threat, the tests that cover it: every one it names must
exist, so that renaming or removing a test cannot leave the threat model pointing at nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "threat-model.md"


def test_every_test_the_threat_model_names_exists() -> None:
    named = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", DOC.read_text())
    assert len(named) > 40
    missing = []
    for file, name in named:
        path = ROOT / file
        if not path.is_file() or not re.search(rf"^(async )?def {name}\(", path.read_text(),
                                               re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert missing == []


def test_the_threat_model_covers_every_trust_boundary_of_the_design() -> None:
    text = DOC.read_text()
    for heading in ("## Assets", "## Trust boundaries", "agents", "operators", "upstreams",
                    "the store", "tenant", "admin API", "PostgreSQL"):
        assert heading in text, heading
