"""Fixtures for the site tests; the helpers behind them are in ``site_helpers``."""

from __future__ import annotations

from pathlib import Path

import pytest

from site_helpers import describe, make_site, mkdocs_build


@pytest.fixture
def fixture_site(tmp_path: Path) -> Path:
    """A fresh copy of the fixture site."""
    return make_site(tmp_path / "site-src")


@pytest.fixture(scope="session")
def built_fixture_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture site built once per session with ``mkdocs build --strict``; returns site/."""
    root = make_site(tmp_path_factory.mktemp("fixture-site") / "src")
    output = root.parent / "site"
    process = mkdocs_build(root, output)
    assert process.returncode == 0, describe(process)
    return output
