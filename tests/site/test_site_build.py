"""Tests that run a real ``mkdocs build --strict`` with the plugin on the fixture site and the repo.

Each build takes a few seconds, so the fixture site is built once per session where a test only
reads the output.
"""

from __future__ import annotations

import gzip
import html
import re
from pathlib import Path

import pytest
import yaml

from kb_tools.kb import check_knowledge_base
from kb_tools.report import format_text

from site_helpers import FIXTURES, REPO_ROOT, describe, mkdocs_build


def fixture_cards(kind_folder: str) -> list[dict]:
    return [
        yaml.safe_load(path.read_text(encoding="utf-8"))
        for path in sorted((FIXTURES / "kb" / kind_folder).glob("*.yaml"))
    ]


def page_title(page: Path) -> str:
    match = re.search(r"<title>(.*?)</title>", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert match, f"{page} has no <title>"
    return match.group(1)


def site_files(site: Path) -> dict[str, bytes]:
    """Return every file of a built site; gzip files are compared by their content."""
    files = {}
    for path in sorted(site.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            # NB: MkDocs writes the output path into the gzip header of sitemap.xml.gz.
            files[path.relative_to(site).as_posix()] = gzip.decompress(data) if path.suffix == ".gz" else data
    return files


# --- The fixture site ------------------------------------------------------------------------


@pytest.mark.parametrize("card", fixture_cards("model_cards"), ids=lambda card: card["id"])
def test_model_page_built_with_title(built_fixture_site: Path, card: dict) -> None:
    page = built_fixture_site / "models" / card["id"] / "index.html"
    assert page.is_file()
    assert page_title(page) == f"{html.escape(card['name'], quote=False)} - Neuro-Omics KB"


@pytest.mark.parametrize("card", fixture_cards("paper_cards"), ids=lambda card: card["id"])
def test_paper_page_built_with_title(built_fixture_site: Path, card: dict) -> None:
    page = built_fixture_site / "papers" / card["id"] / "index.html"
    assert page.is_file()
    assert page_title(page) == f"{html.escape(card['title'], quote=False)} - Neuro-Omics KB"


@pytest.mark.parametrize("path", ["models/index.html", "papers/index.html", "reference/fields/index.html", "reference/tags/index.html"])
def test_catalogue_page_built(built_fixture_site: Path, path: str) -> None:
    assert (built_fixture_site / path).is_file()


def test_nav_lists_generated_pages(built_fixture_site: Path) -> None:
    home = (built_fixture_site / "index.html").read_text(encoding="utf-8")
    for href in ('href="models/"', 'href="models/helix-full/"', 'href="papers/cortex-paper/"', 'href="reference/fields/"'):
        assert href in home


def test_nav_puts_sections_before_contributing(built_fixture_site: Path) -> None:
    home = (built_fixture_site / "index.html").read_text(encoding="utf-8")
    assert home.index('href="models/"') < home.index('href="papers/"') < home.index('href="contributing/"')


def test_model_page_links_paper_page(built_fixture_site: Path) -> None:
    page = (built_fixture_site / "models" / "helix-full" / "index.html").read_text(encoding="utf-8")
    assert 'href="../../papers/helix-paper/"' in page


def test_paper_page_links_model_pages(built_fixture_site: Path) -> None:
    page = (built_fixture_site / "papers" / "helix-paper" / "index.html").read_text(encoding="utf-8")
    assert 'href="../../models/helix-full/"' in page
    assert 'href="../../models/fusion-demo/"' in page


def test_new_card_needs_no_nav_edit(fixture_site: Path, tmp_path: Path) -> None:
    card = yaml.safe_load((fixture_site / "kb" / "model_cards" / "cortex-min.yaml").read_text(encoding="utf-8"))
    card.update(id="cortex-two", name="Cortex Two")
    (fixture_site / "kb" / "model_cards" / "cortex-two.yaml").write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")

    process = mkdocs_build(fixture_site, tmp_path / "site")

    assert process.returncode == 0, describe(process)
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert 'href="models/cortex-two/"' in home


def test_site_without_nav_lists_generated_pages(fixture_site: Path, tmp_path: Path) -> None:
    config_path = fixture_site / "mkdocs.yml"
    config = config_path.read_text(encoding="utf-8")
    config_path.write_text(config.split("\nnav:\n")[0] + "\n", encoding="utf-8")

    process = mkdocs_build(fixture_site, tmp_path / "site")

    assert process.returncode == 0, describe(process)
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert 'href="models/helix-full/"' in home
    assert 'href="papers/helix-paper/"' in home


def test_two_builds_are_identical(fixture_site: Path, tmp_path: Path) -> None:
    first = mkdocs_build(fixture_site, tmp_path / "first")
    second = mkdocs_build(fixture_site, tmp_path / "second")
    assert first.returncode == 0, describe(first)
    assert second.returncode == 0, describe(second)

    first_files = site_files(tmp_path / "first")
    second_files = site_files(tmp_path / "second")
    assert sorted(first_files) == sorted(second_files)
    differing = [path for path in first_files if first_files[path] != second_files[path]]
    assert differing == []


# --- Failing builds --------------------------------------------------------------------------


INVALID_CARD = """\
id: broken
name: Broken
modality: brainwaves
summary: A card with an unknown modality and no sources.
architecture:
  type: transformer
papers:
  - cortex-paper
verification:
  status: unverified
"""


def test_invalid_card_fails_build(fixture_site: Path, tmp_path: Path) -> None:
    (fixture_site / "kb" / "model_cards" / "broken.yaml").write_text(INVALID_CARD, encoding="utf-8")

    process = mkdocs_build(fixture_site, tmp_path / "site")

    assert process.returncode != 0, describe(process)
    output = process.stdout + process.stderr
    assert re.search(r"kb/model_cards/broken\.yaml:\d+:\d+: error\[[\w.-]+\]", output), describe(process)
    assert not (tmp_path / "site" / "models" / "index.html").exists()


def test_invalid_card_report_matches_kb_validate(fixture_site: Path, tmp_path: Path) -> None:
    (fixture_site / "kb" / "model_cards" / "broken.yaml").write_text(INVALID_CARD, encoding="utf-8")
    result = check_knowledge_base(fixture_site)
    report = format_text(result.diagnostics, result.files_checked)

    process = mkdocs_build(fixture_site, tmp_path / "site")

    assert process.returncode != 0, describe(process)
    assert report in process.stdout + process.stderr, describe(process)


def test_one_sided_link_is_logged_without_failing(fixture_site: Path, tmp_path: Path) -> None:
    paper_path = fixture_site / "kb" / "paper_cards" / "helix-paper.yaml"
    paper = yaml.safe_load(paper_path.read_text(encoding="utf-8"))
    paper["models"] = ["helix-full"]  # fusion-demo still lists helix-paper
    paper_path.write_text(yaml.safe_dump(paper, sort_keys=False), encoding="utf-8")

    process = mkdocs_build(fixture_site, tmp_path / "site")

    assert process.returncode == 0, describe(process)
    assert "warning[one-sided-link]" in process.stderr
    page = (tmp_path / "site" / "papers" / "helix-paper" / "index.html").read_text(encoding="utf-8")
    assert 'href="../../models/fusion-demo/"' in page


def test_card_warnings_option_fails_strict_build(fixture_site: Path, tmp_path: Path) -> None:
    paper_path = fixture_site / "kb" / "paper_cards" / "helix-paper.yaml"
    paper = yaml.safe_load(paper_path.read_text(encoding="utf-8"))
    paper["models"] = ["helix-full"]
    paper_path.write_text(yaml.safe_dump(paper, sort_keys=False), encoding="utf-8")
    config_path = fixture_site / "mkdocs.yml"
    config = config_path.read_text(encoding="utf-8")
    config_path.write_text(config.replace("nav_before: Contributing", "nav_before: Contributing\n      card_warnings: warn"), encoding="utf-8")

    process = mkdocs_build(fixture_site, tmp_path / "site")

    assert process.returncode != 0, describe(process)
    assert "warning[one-sided-link]" in process.stderr


def test_hand_written_page_clashing_with_card_fails(fixture_site: Path, tmp_path: Path) -> None:
    (fixture_site / "docs" / "models").mkdir()
    (fixture_site / "docs" / "models" / "helix-full.md").write_text("# Helix\n", encoding="utf-8")

    process = mkdocs_build(fixture_site, tmp_path / "site")

    assert process.returncode != 0, describe(process)
    assert "docs/models/helix-full.md has the path of a page rendered from the cards" in process.stderr


# --- The repository's own knowledge base -----------------------------------------------------


def test_repository_site_builds(tmp_path: Path) -> None:
    if not any((REPO_ROOT / "kb" / "model_cards").glob("*.yaml")):
        pytest.skip("kb/model_cards has no cards yet, so there is no repository site to build")

    process = mkdocs_build(REPO_ROOT, tmp_path / "site")

    assert process.returncode == 0, describe(process)
    for card_path in sorted((REPO_ROOT / "kb" / "model_cards").glob("*.yaml")):
        assert (tmp_path / "site" / "models" / card_path.stem / "index.html").is_file(), card_path.name
    for card_path in sorted((REPO_ROOT / "kb" / "paper_cards").glob("*.yaml")):
        assert (tmp_path / "site" / "papers" / card_path.stem / "index.html").is_file(), card_path.name
