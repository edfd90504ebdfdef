"""Unit tests of the MkDocs plugin's options and navigation, without running a build."""

from __future__ import annotations

import pytest

from kb_tools.plugin import KnowledgeBasePlugin

PAGES = {
    "models/bagel.md": "",
    "models/index.md": "",
    "papers/index.md": "",
    "papers/bagel_2025.md": "",
    "reference/fields.md": "",
    "reference/tags.md": "",
}


def make_plugin(**options) -> KnowledgeBasePlugin:
    plugin = KnowledgeBasePlugin()
    errors, warnings = plugin.load_config(options)
    assert errors == []
    assert warnings == []
    plugin.pages = dict(PAGES)
    return plugin


def test_default_options() -> None:
    plugin = make_plugin()
    assert plugin.config.kb_root == "."
    assert plugin.config.nav_before is None
    assert plugin.config.card_warnings == "info"


def test_invalid_card_warnings_option_rejected() -> None:
    plugin = KnowledgeBasePlugin()
    errors, _ = plugin.load_config({"card_warnings": "error"})
    assert [name for name, _ in errors] == ["card_warnings"]


def test_nav_sections_list_index_first() -> None:
    nav = make_plugin()._insert_nav_sections([])
    assert nav == [
        {"Models": ["models/index.md", "models/bagel.md"]},
        {"Papers": ["papers/index.md", "papers/bagel_2025.md"]},
        {"Reference": ["reference/fields.md", "reference/tags.md"]},
    ]


def test_nav_sections_go_before_named_entry() -> None:
    nav = make_plugin(nav_before="Contributing")._insert_nav_sections(
        [{"Home": "index.md"}, {"Contributing": "contributing.md"}]
    )
    assert [next(iter(entry)) for entry in nav] == ["Home", "Models", "Papers", "Reference", "Contributing"]


@pytest.mark.parametrize("nav_before", [None, "No such entry"])
def test_nav_sections_appended_otherwise(nav_before: str | None) -> None:
    nav = make_plugin(nav_before=nav_before)._insert_nav_sections([{"Home": "index.md"}])
    assert [next(iter(entry)) for entry in nav] == ["Home", "Models", "Papers", "Reference"]


def test_nav_section_titles_configurable() -> None:
    plugin = make_plugin(models_title="Model cards", papers_title="Paper cards", reference_title="Fields")
    nav = plugin._insert_nav_sections([])
    assert [next(iter(entry)) for entry in nav] == ["Model cards", "Paper cards", "Fields"]
