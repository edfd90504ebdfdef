"""Data-driven cases: each folder under tests/cases/invalid/ is a small repository plus expected.yaml.

expected.yaml gives the exit code and the exact list of diagnostics (path, line, column,
severity, rule), optionally with text that the message or hint must contain. Each case runs
through the real command line and through the library, and both must agree with the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kb_tools.kb import check_knowledge_base, load_knowledge_base
from kb_tools.load import load_card_file
from kb_tools.schema import check_card, load_schemas

from kb_helpers import CASES_DIR, SCHEMA_DIR, describe, make_repo, run_kb

INVALID_CASES = sorted(p.name for p in (CASES_DIR / "invalid").iterdir() if p.is_dir())
VALID_CARDS = sorted((CASES_DIR / "valid" / "kb").glob("*_cards/*.yaml"))
KEYS = ("path", "line", "column", "severity", "rule")


def _expected(case: str) -> dict:
    return yaml.safe_load((CASES_DIR / "invalid" / case / "expected.yaml").read_text(encoding="utf-8"))


def _check_texts(found: list[dict], expected: list[dict]) -> None:
    for got, want in zip(found, expected):
        if "message_contains" in want:
            assert want["message_contains"] in got["message"], (got["path"], got["rule"])
        if "hint_contains" in want:
            assert want["hint_contains"] in got["hint"], (got["path"], got["rule"])


def test_cases_exist():
    assert len(INVALID_CASES) >= 25
    assert len(VALID_CARDS) >= 4


@pytest.mark.parametrize("case", INVALID_CASES)
def test_invalid_case_cli(case: str, tmp_path: Path):
    expected = _expected(case)
    repo = make_repo(tmp_path / "repo", CASES_DIR / "invalid" / case)
    (repo / "expected.yaml").unlink()

    result = run_kb("validate", "--root", str(repo), "--format", "json")

    assert result.returncode == expected["exit_code"], describe(result)
    found = json.loads(result.stdout)
    assert [{k: d[k] for k in KEYS} for d in found] == [{k: d[k] for k in KEYS} for d in expected["diagnostics"]]
    _check_texts(found, expected["diagnostics"])
    assert result.stderr == ""


@pytest.mark.parametrize("case", INVALID_CASES)
def test_invalid_case_library(case: str, tmp_path: Path):
    expected = _expected(case)
    repo = make_repo(tmp_path / "repo", CASES_DIR / "invalid" / case)
    (repo / "expected.yaml").unlink()

    result = check_knowledge_base(repo)

    found = [{"path": d.path.as_posix(), "line": d.line, "column": d.column, "severity": d.severity.value,
              "rule": d.rule, "message": d.message, "hint": d.hint} for d in result.diagnostics]
    assert [{k: d[k] for k in KEYS} for d in found] == [{k: d[k] for k in KEYS} for d in expected["diagnostics"]]
    _check_texts(found, expected["diagnostics"])
    assert (0 if result.ok else 1) == expected["exit_code"]
    failed_files = {d.path for d in result.diagnostics if d.is_error}
    assert all(card.path not in failed_files for card in result.knowledge_base.cards())


@pytest.mark.parametrize("card_path", VALID_CARDS, ids=lambda p: p.name)
def test_valid_card_alone(card_path: Path):
    schemas, problems = load_schemas(SCHEMA_DIR)
    assert problems == []
    loaded = load_card_file(card_path)
    assert loaded.diagnostics == []
    kind = "model" if card_path.parent.name == "model_cards" else "paper"
    assert check_card(schemas, kind, loaded) == []


def test_valid_cases_cli(valid_repo: Path):
    result = run_kb("validate", "--root", str(valid_repo))

    assert result.returncode == 0, describe(result)
    assert result.stdout == "0 errors, 0 warnings in 4 files\n"


def test_valid_cases_library(valid_repo: Path):
    kb, diagnostics = load_knowledge_base(valid_repo)

    assert diagnostics == []
    assert sorted(kb.models) == ["cortex-vit", "helix-lm"]
    assert sorted(kb.papers) == ["cortex-2024", "helix-2025"]
    assert kb.models["helix-lm"].path == Path("kb/model_cards/helix-lm.yaml")
    assert [p.id for p in kb.papers_for_model("cortex-vit")] == ["cortex-2024", "helix-2025"]


def test_valid_card_values():
    loaded = load_card_file(CASES_DIR / "valid" / "kb" / "model_cards" / "helix-lm.yaml")
    data = loaded.data

    assert data["verification"]["checked_on"] == "2025-05-20"
    assert data["sources"][0]["note"] == "Version 1.10 of the code."
    assert data["architecture"]["context_length"]["value"] == 131072
    assert data["architecture"]["parameter_counts"][0]["total"] == "1.5M"
    assert data["integration"]["fusion_sketch"].startswith("gene embedding ----\\\n")
    assert loaded.positions["/alternatives/0/id"] == (73, 9)
    assert loaded.key_positions["/alternatives"] == (72, 1)
