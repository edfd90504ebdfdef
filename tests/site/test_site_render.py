"""Tests of the renderer without MkDocs: golden pages, catalogue order, links and escaping.

The golden files under ``tests/site/golden/`` are the pages rendered from the fixture cards,
compared byte for byte. After an intended change to a template or a fixture card, regenerate
them and review the diff::

    KB_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/site/test_site_render.py

The field reference golden page is built from the repository's schemas, so a schema change
also needs a regenerated golden file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kb_tools.cards import Card, KnowledgeBase
from kb_tools.kb import load_knowledge_base
from kb_tools.render import (
    escape_paragraphs,
    escape_text,
    format_parameter_sizes,
    link,
    preformatted,
    render_pages,
    safe_href,
)

from site_helpers import make_site

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("KB_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def fixture_kb(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    root = make_site(tmp_path_factory.mktemp("render") / "src")
    kb, diagnostics = load_knowledge_base(root)
    assert diagnostics == [], "the fixture cards must be valid"
    return kb


@pytest.fixture(scope="module")
def pages(fixture_kb: KnowledgeBase) -> dict[str, str]:
    return render_pages(fixture_kb)


def minimal_model(model_id: str, **fields) -> Card:
    data = {
        "id": model_id,
        "name": model_id.title(),
        "modality": "genetics",
        "summary": "A model.",
        "architecture": {"type": "transformer"},
        "papers": [],
        "verification": {"status": "unverified"},
        "sources": [{"title": "Source", "url": "https://example.org/s", "kind": "paper"}],
    }
    data.update(fields)
    return Card("model", model_id, Path(f"kb/model_cards/{model_id}.yaml"), data)


def minimal_paper(paper_id: str, **fields) -> Card:
    data = {
        "id": paper_id,
        "title": paper_id.title(),
        "authors": ["A Author"],
        "year": 2024,
        "summary": "A paper.",
        "verification": {"status": "unverified"},
        "sources": [{"title": "Source", "url": "https://example.org/s", "kind": "paper"}],
    }
    data.update(fields)
    return Card("paper", paper_id, Path(f"kb/paper_cards/{paper_id}.yaml"), data)


def knowledge_base(*cards: Card) -> KnowledgeBase:
    root = Path(__file__).resolve().parents[2]  # the repository, for kb/schemas
    kb = KnowledgeBase(root)
    for card in cards:
        (kb.models if card.kind == "model" else kb.papers)[card.id] = card
    return kb


# --- Golden pages ----------------------------------------------------------------------------


def golden_paths() -> list[str]:
    return sorted(path.relative_to(GOLDEN).as_posix() for path in GOLDEN.rglob("*.md"))


def test_golden_files_match_page_set(pages: dict[str, str]) -> None:
    if UPDATE_GOLDEN:
        for old in GOLDEN.rglob("*.md"):
            old.unlink()
        for path, markdown in pages.items():
            target = GOLDEN / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(markdown, encoding="utf-8", newline="\n")
    assert golden_paths() == sorted(pages)


@pytest.mark.parametrize("path", golden_paths())
def test_page_matches_golden(pages: dict[str, str], path: str) -> None:
    expected = (GOLDEN / path).read_text(encoding="utf-8")
    assert pages.get(path) == expected, f"rerun with KB_UPDATE_GOLDEN=1 if {path} changed on purpose"


def test_render_is_deterministic(fixture_kb: KnowledgeBase, pages: dict[str, str]) -> None:
    again = render_pages(fixture_kb)
    assert list(again) == list(pages)
    assert again == pages


def test_pages_end_with_one_newline(pages: dict[str, str]) -> None:
    for path, markdown in pages.items():
        assert markdown.endswith("\n"), path
        assert not markdown.endswith("\n\n"), path


# --- Catalogues ------------------------------------------------------------------------------


def headings(markdown: str, level: int) -> list[str]:
    return re.findall(rf"^{'#' * level} (.+)$", markdown, flags=re.MULTILINE)


def test_models_grouped_by_modality_in_schema_order(pages: dict[str, str]) -> None:
    assert headings(pages["models/index.md"], 2) == ["Genetics", "Brain", "Multimodal"]


def test_models_sorted_by_name_within_group(pages: dict[str, str]) -> None:
    catalogue = pages["models/index.md"]
    genetics = catalogue.split("## Genetics")[1].split("## Brain")[0]
    assert genetics.index("[AlphaDNA](alpha-dna.md)") < genetics.index("[Helix Full](helix-full.md)")


def test_model_catalogue_row_has_key_facts(pages: dict[str, str]) -> None:
    row = next(line for line in pages["models/index.md"].splitlines() if "[Helix Full]" in line)
    cells = [cell.strip() for cell in row.strip("|").split(" | ")]
    assert cells == [
        "[Helix Full](helix-full.md)",
        "DNA language model",
        "DNA sequence",
        "8M, 1.5B (400M active)",
        "131,072 base pairs",
        "code Apache-2.0, weights CC-BY-4.0",
        "Partially verified",
    ]


def test_parameter_sizes_sorted_by_value() -> None:
    counts = [
        {"variant": "large", "total": "40B"},
        {"variant": "large-base", "total": "40B"},
        {"variant": "tiny", "total": "900M"},
        {"variant": "mid", "total": "7B"},
        {"variant": "small", "total": "1.5B"},
    ]
    assert format_parameter_sizes(counts) == "900M, 1.5B, 7B, 40B"


def test_parameter_sizes_show_active_count() -> None:
    counts = [{"variant": "moe", "total": "14B", "active": "7B"}, {"variant": "dense", "total": "14B"}]
    assert format_parameter_sizes(counts) == "14B, 14B (7B active)"


def test_papers_grouped_by_year_newest_first(pages: dict[str, str]) -> None:
    assert headings(pages["papers/index.md"], 2) == ["2025", "2024", "2023"]


def test_papers_sorted_by_title_within_year(pages: dict[str, str]) -> None:
    year = pages["papers/index.md"].split("## 2025")[1].split("## 2024")[0]
    assert year.index("(fusion-paper.md)") < year.index("(helix-paper.md)")


def test_empty_knowledge_base_renders_catalogues() -> None:
    pages = render_pages(knowledge_base())
    assert "No model cards yet." in pages["models/index.md"]
    assert "No paper cards yet." in pages["papers/index.md"]
    assert "No card has a tag yet." in pages["reference/tags.md"]


# --- Links between pages ---------------------------------------------------------------------


def test_model_page_links_its_papers(pages: dict[str, str]) -> None:
    assert "- [Helix: a made-up DNA model](../papers/helix-paper.md) (2025)" in pages["models/helix-full.md"]


def test_paper_page_links_its_models(pages: dict[str, str]) -> None:
    page = pages["papers/helix-paper.md"]
    assert "- [Fusion Demo](../models/fusion-demo.md): unified multimodal model" in page
    assert "- [Helix Full](../models/helix-full.md): DNA language model" in page


def test_one_sided_reference_links_both_ways() -> None:
    # The model cites the paper, but the paper does not name the model.
    kb = knowledge_base(minimal_model("encoder", papers=["study"]), minimal_paper("study"))
    pages = render_pages(kb)
    assert "[Study](../papers/study.md)" in pages["models/encoder.md"]
    assert "[Encoder](../models/encoder.md)" in pages["papers/study.md"]


def test_alternative_links_to_model_page(pages: dict[str, str]) -> None:
    assert "- [Cortex Min](cortex-min.md): When the input is brain imaging rather than DNA" in pages["models/helix-full.md"]


def test_page_path_collision_raises() -> None:
    # Validation rejects the id 'index'; the renderer must still never overwrite the catalogue.
    with pytest.raises(ValueError, match="two pages would be written to models/index.md"):
        render_pages(knowledge_base(minimal_model("index")))


def test_unknown_alternative_is_plain_text() -> None:
    kb = knowledge_base(minimal_model("encoder", alternatives=[{"id": "missing-model", "when": "Never"}]))
    page = render_pages(kb)["models/encoder.md"]
    assert "- missing-model: Never" in page


def test_resource_in_docs_links_to_page(pages: dict[str, str]) -> None:
    assert "- [How to contribute](../contributing.md)" in pages["models/helix-full.md"]


@pytest.mark.parametrize(("path", "expected"), [
    # Outside the docs folder once normalised, so no link that would leave the site.
    ("docs/../README.md", "- Readme (README.md)"),
    ("docs/./guide.md", "- [Readme](../guide.md)"),
])
def test_resource_path_is_normalised(path: str, expected: str) -> None:
    resource = {"title": "Readme", "path": path}
    page = render_pages(knowledge_base(minimal_model("encoder", resources=[resource])))["models/encoder.md"]
    assert expected in page


def test_resource_outside_docs_is_plain_text() -> None:
    resource = {"title": "Model code", "path": "reference_impl/bagel/model.py"}
    page = render_pages(knowledge_base(minimal_model("encoder", resources=[resource])))["models/encoder.md"]
    assert "- Model code (reference\\_impl/bagel/model.py)" in page


def test_paper_identifiers_link_to_resolvers(pages: dict[str, str]) -> None:
    page = pages["papers/helix-paper.md"]
    assert '<a href="https://arxiv.org/abs/2501.01234">2501.01234</a>' in page
    assert '<a href="https://doi.org/10.1234/helix.2025">10.1234/helix.2025</a>' in page
    assert '<a href="https://pubmed.ncbi.nlm.nih.gov/12345678/">12345678</a>' in page


def test_tags_page_lists_cards_per_tag(pages: dict[str, str]) -> None:
    tags = pages["reference/tags.md"]
    assert headings(tags, 2) == ["dna", "multimodal", "state-space-model"]
    dna = tags.split("## dna")[1].split("## multimodal")[0]
    assert "[Helix: a made-up DNA model](../papers/helix-paper.md) (paper)" in dna


# --- Sections follow the card ----------------------------------------------------------------


def test_minimal_card_has_no_empty_sections(pages: dict[str, str]) -> None:
    page = pages["models/cortex-min.md"]
    assert headings(page, 2) == ["Key facts", "Architecture", "Papers", "Sources", "Verification"]
    assert headings(page, 3) == []


def test_full_card_has_every_section(pages: dict[str, str]) -> None:
    assert headings(pages["models/helix-full.md"], 2) == [
        "Key facts",
        "Architecture",
        "Training",
        "Tasks",
        "Integration",
        "Embedding extraction",
        "Strengths",
        "Limitations",
        "When to use",
        "When not to use",
        "Alternatives",
        "Papers",
        "Engineering notes",
        "Next steps",
        "Resources",
        "Sources",
        "Verification",
    ]


def test_paper_authors_keep_card_order(pages: dict[str, str]) -> None:
    assert "**Authors:** Ada Example, Ben Sample, Cleo Placeholder" in pages["papers/helix-paper.md"]


def test_fusion_sketch_is_preformatted(pages: dict[str, str]) -> None:
    page = pages["models/helix-full.md"]
    assert "<pre><code>DNA window --&gt; Helix --&gt; mean pool --&gt; gene vector\n" in page


# --- Field reference -------------------------------------------------------------------------


def test_field_reference_lists_every_model_field(pages: dict[str, str]) -> None:
    reference = pages["reference/fields.md"]
    for field in ("id", "architecture.context\\_length.unit", "integration.embedding\\_extraction.steps"):
        assert f"| <code>{field}</code> |" in reference


def test_field_reference_marks_required_fields(pages: dict[str, str]) -> None:
    rows = {
        line.split(" | ")[0]: line.split(" | ")
        for line in pages["reference/fields.md"].splitlines()
        if line.startswith("| <code>")
    }
    assert rows["| <code>summary</code>"][3] == "yes"
    assert rows["| <code>primary\\_use</code>"][3] == "no"


def test_field_reference_shows_enum_values(pages: dict[str, str]) -> None:
    assert "one of 'unverified', 'partially\\_verified', 'verified'" in pages["reference/fields.md"]


# --- Escaping --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain words", "plain words"),
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("[x](javascript:alert(1))", "\\[x\\](javascript:alert(1))"),
        ("![i](x.png)", "\\!\\[i\\](x.png)"),
        ("`code`", "\\`code\\`"),
        ("a | b", "a \\| b"),
        ("# heading", "\\# heading"),
        ("> quote", "&gt; quote"),
        ("- item", "\\- item"),
        ("+ item", "\\+ item"),
        ("---", "\\---"),
        ("1. item", "1\\. item"),
        ("1.5B", "1.5B"),
        ("x-y", "x-y"),
        ("**bold** _em_", "\\*\\*bold\\*\\* \\_em\\_"),
        ("{: onclick=x}", "\\{: onclick=x\\}"),
        ("a\\b", "a\\\\b"),
        ("&lt;", "&amp;lt;"),
        ("line one\n\n    line two", "line one line two"),
        ("~~~ fence", "&#126;&#126;&#126; fence"),
        ("??? note", "&#63;?? note"),
    ],
)
def test_escape_text(text: str, expected: str) -> None:
    assert escape_text(text) == expected


def test_escape_paragraphs_keeps_paragraphs() -> None:
    assert escape_paragraphs("One\nline.\n\n# Two") == "One line.\n\n\\# Two"


def test_preformatted_cannot_be_closed_by_card() -> None:
    block = preformatted("a\n</code></pre><script>x</script>\n```\n~~~\nb")
    assert block == (
        "<pre><code>a\n&lt;/code&gt;&lt;/pre&gt;&lt;script&gt;x&lt;/script&gt;\n"
        "&#96;&#96;&#96;\n&#126;&#126;&#126;\nb</code></pre>"
    )


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "JAVASCRIPT:alert(1)", " javascript:alert(1)", "data:text/html,x", "//evil.example", "ftp://x.org/a", "mailto:a@b.org"],
)
def test_non_http_urls_get_no_link(url: str) -> None:
    assert safe_href(url) is None
    rendered = link(url, "title")
    assert "<a" not in rendered
    assert rendered.startswith("title (")


def test_http_url_is_percent_encoded() -> None:
    assert safe_href('https://example.org/a"b<c>`d\\e f[g]') == "https://example.org/a%22b%3Cc%3E%60d%5Ce%20f%5Bg%5D"


def test_link_escapes_its_text() -> None:
    assert link("https://example.org", "<b>[x]</b>") == '<a href="https://example.org">&lt;b&gt;\\[x\\]&lt;/b&gt;</a>'


def test_source_with_bad_url_renders_without_link() -> None:
    source = {"title": "Evil", "url": "javascript:alert(1)", "kind": "paper"}
    page = render_pages(knowledge_base(minimal_model("encoder", sources=[source])))["models/encoder.md"]
    assert "- Evil (javascript:alert(1)): paper" in page
    assert "href" not in page.split("## Sources")[1]
