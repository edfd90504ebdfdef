"""Fixtures for the kb_tools tests: scratch repositories with the real schemas."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb_helpers import CASES_DIR, make_repo


@pytest.fixture
def empty_repo(tmp_path: Path) -> Path:
    """A repository root with the real schemas and empty card folders."""
    return make_repo(tmp_path / "repo")


@pytest.fixture
def valid_repo(tmp_path: Path) -> Path:
    """A repository root with the valid test cards."""
    return make_repo(tmp_path / "repo", CASES_DIR / "valid")
