"""Card text must reach the built HTML as text, never as markup.

The test fills every free-text field of a fixture model card and a fixture paper card with
HTML and Markdown payloads, builds the site with MkDocs, and parses each page: the payloads must
appear as literal text, and no element, attribute or link may come from them. The text fields
are found by walking the schemas, so a new text field is covered without editing this test.
"""

from __future__ import annotations

import html.parser
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from site_helpers import REPO_ROOT, describe, make_site, mkdocs_build

SCHEMA_DIR = REPO_ROOT / "kb" / "schemas"
TEXT_REF = "defs.schema.json#/$defs/text"

# Each payload is valid text per the schema: no leading or trailing whitespace.
PAYLOADS = [
    '<script>alert("kb-1")</script> <img src=x onerror=alert("kb-2")>',
    "[click](javascript:alert('kb-3')) ![image](javascript:alert('kb-4')) <javascript:alert('kb-5')>",
    "# heading `code` a | b **bold** _em_ {: onclick=\"alert('kb-6')\" }",
    "> quote\n\n- item\n1. item\n\n    indented <a href=\"javascript:alert('kb-7')\">x</a>",
    "```\n</code></pre><script>alert('kb-8')</script>\n```\n!!! note\n    admonition\n\n~~~\n??? note\n~~~",
    '??? note "details"\n~~~\n!!! warning\n~~~',
]
# Pieces of the payloads that must be visible as text once HTML-unescaped.
VISIBLE = [
    '<script>alert("kb-1")</script>',
    '<img src=x onerror=alert("kb-2")>',
    "[click](javascript:alert('kb-3'))",
    "![image](javascript:alert('kb-4'))",
    "# heading `code` a | b **bold** _em_",
    "> quote",
    "</code></pre><script>alert('kb-8')</script>",
]


def load_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))


def resolve(schema: dict[str, Any], base: str) -> tuple[dict[str, Any], str, bool]:
    """Follow ``$ref``; return the target, its file and whether the field is free text."""
    is_text = False
    while "$ref" in schema:
        ref = schema["$ref"]
        file_name, _, pointer = ref.partition("#")
        file_name = file_name or base
        is_text = is_text or f"{file_name}#{pointer}" == TEXT_REF
        target: Any = load_schema(file_name)
        for part in pointer.strip("/").split("/"):
            target = target[part]
        schema, base = target, file_name
    return schema, base, is_text


class PayloadFiller:
    """Replace every free-text value of a card with a payload, cycling through ``PAYLOADS``."""

    def __init__(self) -> None:
        self.count = 0

    def fill(self, data: Any, schema: dict[str, Any], base: str) -> Any:
        schema, base, is_text = resolve(schema, base)
        if is_text and isinstance(data, str):
            payload = PAYLOADS[self.count % len(PAYLOADS)]
            self.count += 1
            return payload
        if isinstance(data, dict):
            properties = schema.get("properties", {})
            return {key: self.fill(value, properties[key], base) if key in properties else value for key, value in data.items()}
        if isinstance(data, list):
            return [self.fill(item, schema.get("items", {}), base) for item in data]
        return data


def inject(site: Path, folder: str, card_id: str, schema_file: str) -> int:
    """Fill a card's text fields with payloads; return how many fields were filled.

    A model's fusion sketch always gets the payload with a fence and ``</pre>``, the two ways
    out of a preformatted block.
    """
    path = site / "kb" / folder / f"{card_id}.yaml"
    filler = PayloadFiller()
    data = filler.fill(yaml.safe_load(path.read_text(encoding="utf-8")), load_schema(schema_file), schema_file)
    if "fusion_sketch" in data.get("integration", {}):
        data["integration"]["fusion_sketch"] = PAYLOADS[4]
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return filler.count


class MarkupCollector(html.parser.HTMLParser):
    """Collect what a page's markup does: tags, event attributes, link targets and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.event_attributes: list[str] = []
        self.link_targets: list[str] = []
        self.script_text: list[str] = []
        self.text: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.in_script = tag == "script"
        for name, value in attrs:
            if name.startswith("on"):
                self.event_attributes.append(f"<{tag} {name}={value!r}>")
            if name in ("href", "src", "action", "formaction") and value is not None:
                self.link_targets.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False

    def handle_data(self, data: str) -> None:
        (self.script_text if self.in_script else self.text).append(data)


def parse(page: Path) -> MarkupCollector:
    collector = MarkupCollector()
    collector.feed(page.read_text(encoding="utf-8"))
    return collector


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_site(tmp_path_factory.mktemp("hostile") / "src")
    assert inject(root, "model_cards", "helix-full", "model_card.schema.json") >= 40
    assert inject(root, "paper_cards", "helix-paper", "paper_card.schema.json") >= 8
    output = root.parent / "site"
    process = mkdocs_build(root, output)
    assert process.returncode == 0, describe(process)
    return output


PAGES = [
    "models/helix-full/index.html",
    "papers/helix-paper/index.html",
    "models/index.html",
    "papers/index.html",
    "reference/tags/index.html",
    "models/fusion-demo/index.html",
]


@pytest.mark.parametrize("page", PAGES)
def test_no_script_from_cards(hostile_site: Path, page: str) -> None:
    markup = parse(hostile_site / page)
    assert not [text for text in markup.script_text if "kb-" in text]


@pytest.mark.parametrize("page", PAGES)
def test_no_event_attributes(hostile_site: Path, page: str) -> None:
    assert parse(hostile_site / page).event_attributes == []


@pytest.mark.parametrize("page", PAGES)
def test_no_javascript_links(hostile_site: Path, page: str) -> None:
    targets = parse(hostile_site / page).link_targets
    hostile = [
        target
        for target in targets
        if target.strip().lower().startswith("javascript:")
        or ("kb-" in target and not target.startswith("#"))  # heading anchors are slugs
        or target == "x"
    ]
    assert hostile == []


@pytest.mark.parametrize("page", PAGES)
def test_payload_adds_no_elements(hostile_site: Path, built_fixture_site: Path, page: str) -> None:
    # Only text changed, so the page has the same elements as the page built from the plain
    # fixture. Paragraphs are the exception: a blank line in a summary starts a new one.
    hostile = Counter(tag for tag in parse(hostile_site / page).tags if tag != "p")
    plain = Counter(tag for tag in parse(built_fixture_site / page).tags if tag != "p")
    assert hostile == plain


def test_model_page_shows_payloads_as_text(hostile_site: Path) -> None:
    text = "".join(parse(hostile_site / "models/helix-full/index.html").text)
    for piece in VISIBLE:
        assert piece in text


def test_model_page_has_one_heading_1(hostile_site: Path) -> None:
    assert parse(hostile_site / "models/helix-full/index.html").tags.count("h1") == 1


def test_model_page_code_only_in_fusion_sketch(hostile_site: Path) -> None:
    page = (hostile_site / "models/helix-full/index.html").read_text(encoding="utf-8")
    article = page.split('<article class="md-content__inner md-typeset">')[1].split("</article>")[0]
    assert article.count("<code>") == 1
    assert article.count("<pre>") == 1


def test_fusion_sketch_keeps_fence_as_text(hostile_site: Path) -> None:
    page = (hostile_site / "models/helix-full/index.html").read_text(encoding="utf-8")
    block = page.split("<pre><code>")[1].split("</code></pre>")[0]
    assert "&lt;/code&gt;&lt;/pre&gt;&lt;script&gt;" in block
    assert "&#96;&#96;&#96;\n" in block
    assert "\n&#126;&#126;&#126;" in block


def test_paper_page_shows_payloads_as_text(hostile_site: Path) -> None:
    text = "".join(parse(hostile_site / "papers/helix-paper/index.html").text)
    assert '<script>alert("kb-1")</script>' in text
    assert "[click](javascript:alert('kb-3'))" in text


def test_page_title_is_text(hostile_site: Path) -> None:
    # The model's name is the first payload; the <title> must hold it escaped.
    page = (hostile_site / "models/helix-full/index.html").read_text(encoding="utf-8")
    title = page.split("<title>")[1].split("</title>")[0]
    assert "<" not in title
    assert "&lt;script&gt;" in title
