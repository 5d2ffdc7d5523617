"""The documentation spine mentions the new surfaces, and the ledger cites real tests."""

from __future__ import annotations

import ast
import re

import pytest

from .support import ROOT

SPINE = [
    "README.md",
    "ARCHITECTURE.md",
    "architecture_updates.md",
    "CHANGELOG.md",
    "docs/CHANGEME.md",
    "docs/dev_notes_modder_hooks.md",
]
MUST_MENTION = [
    "on_scene_enter",
    "on_choice_render",
    "on_asset_saved",
    "Debug Integrations",
    "/api/modder/hooks",
    "/api/providers",
]
LEDGER = ROOT / "docs" / "CODEX_STUBS" / "2025-10-21_MODDER_HOOKS_DEBUG_API_A_B.md"


@pytest.mark.parametrize("doc", SPINE)
def test_every_spine_document_mentions_the_new_surfaces(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    missing = [term for term in MUST_MENTION if term not in text]
    assert not missing, f"{doc} does not mention {missing}"


def test_observability_doc_covers_the_panel_and_status_rules() -> None:
    text = (ROOT / "docs" / "development" / "observability_debug.md").read_text(encoding="utf-8")
    for term in (
        "Debug Integrations",
        "/api/providers/health",
        "/api/providers/quota",
        "green",
        "amber",
        "red",
        "gray",
    ):
        assert term in text, term


def test_ledger_has_the_work_order_sections() -> None:
    text = LEDGER.read_text(encoding="utf-8")
    for heading in ("## Intent", "## Scope", "## Deliverables", "## Acceptance"):
        assert heading in text


def test_ledger_cites_only_tests_that_exist() -> None:
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", LEDGER.read_text(encoding="utf-8"))
    assert len(cited) >= 8
    for path, name in cited:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"the ledger cites {path}::{name}, which does not exist"
