"""Render a KnowledgeBase into Markdown pages with Jinja2, independent of any site generator.

``render_pages`` returns ``{path: markdown}`` with paths relative to the site's docs folder:

- ``models/index.md`` and ``models/<id>.md``: the model catalogue and one page per model card;
- ``papers/index.md`` and ``papers/<id>.md``: the paper catalogue and one page per paper card;
- ``reference/fields.md``: every card field, built from the JSON Schemas;
- ``reference/tags.md``: every tag with the cards that carry it.

Card text is data, never markup. Every ``{{ ... }}`` in a template passes through
``_finalize``, which escapes plain strings for Markdown and HTML, so a template that forgets a
filter still cannot let a card inject a tag, a link or a heading. Filters and helpers that build
markup (links, paragraphs, preformatted blocks, front matter titles) escape their input
themselves and return ``SafeMarkdown``, which ``_finalize`` passes through unchanged. Links to
outside pages are emitted only for http(s) URLs, and any other URL is shown as escaped text.

The output targets Python-Markdown with the ``tables`` extension, as MkDocs uses it.
"""

from __future__ import annotations

import html
import json
import posixpath
import re
import urllib.parse
from pathlib import Path
from typing import Any, Iterable

import jinja2

from kb_tools.cards import Card, KnowledgeBase

TEMPLATE_PACKAGE = "kb_tools"
TEMPLATE_FOLDER = "templates"

# Headings of the model catalogue, in the order of the schema's modality enum.
MODALITY_TITLES = {
    "genetics": "Genetics",
    "brain": "Brain",
    "behaviour": "Behaviour",
    "clinical": "Clinical",
    "multimodal": "Multimodal",
    "general": "General",
}

VERIFICATION_TITLES = {
    "verified": "Verified",
    "partially_verified": "Partially verified",
    "unverified": "Unverified",
}

SOURCE_KIND_TITLES = {
    "paper": "paper",
    "repository": "repository",
    "model_weights": "model weights",
    "documentation": "documentation",
    "dataset": "dataset",
}

# Schema files the field reference documents, with the heading each gets.
SCHEMA_PAGES = (
    ("model_card.schema.json", "Model card"),
    ("paper_card.schema.json", "Paper card"),
)


class SafeMarkdown(str):
    """Markdown that is already escaped or built by this module; ``_finalize`` leaves it as is."""


# --- Escaping --------------------------------------------------------------------------------

# Characters that Python-Markdown treats as markup wherever they occur. All of them are in its
# backslash-escape list ("|" once the tables extension is loaded), so "\x" renders as x.
_INLINE_MARKUP = re.compile(r"([\\`*_{}\[\]#!|])")
# A leading "-", "+" or "1." would open a list or a horizontal rule.
_LIST_START = re.compile(r"^([+-])(?=[\s+-]|$)|^([0-9]+)\.(?=\s|$)")
# Fence characters of pymdownx.superfences. A backslash does not escape "~" in Python-Markdown,
# nor either character inside raw HTML, so they become numeric character references instead.
_FENCE_CHARACTERS = {"`": "&#96;", "~": "&#126;"}
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def _escape_list_start(match: re.Match[str]) -> str:
    if match.group(1):
        return "\\" + match.group(1)
    return match.group(2) + "\\."


def escape_text(value: str) -> SafeMarkdown:
    """Escape text for one line of Markdown that must render as literal text.

    Whitespace runs, newlines included, collapse to one space so the text cannot end a list
    item, start an indented code block or split a table row. ``&``, ``<`` and ``>`` become HTML
    entities, which Python-Markdown passes through and browsers show as the characters.
    Markdown markup characters get a backslash, and so does a leading ``-``, ``+`` or
    ``1.``, because list item text is parsed again as a block. ``|`` is escaped everywhere so
    the same text is safe in a table cell. That escape needs the ``tables`` extension.
    """
    text = " ".join(str(value).split())
    text = html.escape(text, quote=False)
    text = _INLINE_MARKUP.sub(r"\\\1", text)
    text = _LIST_START.sub(_escape_list_start, text)
    text = text.replace("~", _FENCE_CHARACTERS["~"])
    # A leading "???" opens a pymdownx.details block, and "?" has no backslash escape.
    if text.startswith("?"):
        text = "&#63;" + text[1:]
    return SafeMarkdown(text)


def escape_paragraphs(value: str) -> SafeMarkdown:
    """Escape multi-paragraph text: blank lines separate paragraphs, each escaped as one line."""
    paragraphs = [p for p in _BLANK_LINE.split(str(value).strip()) if p.strip()]
    return SafeMarkdown("\n\n".join(escape_text(p) for p in paragraphs))


def preformatted(value: str) -> SafeMarkdown:
    """Return text as an HTML ``<pre><code>`` block that keeps its line breaks.

    The content is HTML-escaped and fence characters become character references, so neither
    ``</pre>`` nor a Markdown fence inside the text can end the block. Python-Markdown passes a
    raw HTML block through unparsed, blank lines included.
    """
    lines = str(value).rstrip().splitlines()
    body = "\n".join(html.escape(line.rstrip(), quote=False) for line in lines)
    # NB: pymdownx.superfences finds fences before raw HTML blocks are set aside, so a "```"
    # line inside <pre> would still start a code block unless it is a character reference.
    for character, reference in _FENCE_CHARACTERS.items():
        body = body.replace(character, reference)
    return SafeMarkdown(f"<pre><code>{body}</code></pre>")


def front_matter_title(value: str) -> SafeMarkdown:
    """Return a page title as a YAML front matter value, HTML-escaped.

    Themes print the front matter title into ``<title>`` and the navigation without escaping
    it (Material for MkDocs 9.8 does), so the value carries the entities itself. A JSON string
    is a valid YAML scalar, which keeps quotes and colons in a title from breaking the YAML.
    """
    return SafeMarkdown(json.dumps(html.escape(" ".join(str(value).split()), quote=True)))


# Characters that may stay unencoded in an href; everything else is percent-encoded. That
# removes quotes, angle and square brackets, backticks, backslashes and whitespace, which
# Python-Markdown's inline patterns would otherwise see inside the raw <a> tag.
_URL_SAFE = "/:?#@!$&'()*+,;=%~-._"
_HTTP_URL = re.compile(r"^https?://[^/\s?#]+", re.IGNORECASE)


def safe_href(url: str) -> str | None:
    """Return ``url`` ready for an href attribute, or None unless it is an absolute http(s) URL."""
    url = str(url).strip()
    if not _HTTP_URL.match(url):
        return None
    return html.escape(urllib.parse.quote(url, safe=_URL_SAFE), quote=True)


def link(url: str, text: str | None = None) -> SafeMarkdown:
    """Return an outside link for an http(s) URL; for any other URL, the escaped text only.

    The link is an inline HTML ``<a>`` so that the URL never goes through Markdown's link
    parser. The link text is escaped Markdown, which Python-Markdown renders inside the tag.
    """
    label = escape_text(text if text is not None else url)
    href = safe_href(url)
    if href is None:
        if text is None:
            return label
        return SafeMarkdown(f"{label} ({escape_text(url)})")
    return SafeMarkdown(f'<a href="{href}">{label}</a>')


def identifier_link(prefix: str, identifier: str, suffix: str = "") -> SafeMarkdown:
    """Link a persistent identifier (arXiv id, DOI, PubMed id) to its resolver page."""
    quoted = urllib.parse.quote(str(identifier), safe="/:;()._-")
    return link(prefix + quoted + suffix, str(identifier))


def inline_code(value: str) -> SafeMarkdown:
    """Return text in an HTML ``<code>`` element; the text inside is escaped like any other."""
    return SafeMarkdown(f"<code>{escape_text(value)}</code>")


def _finalize(value: Any) -> str:
    """Escape every value a template prints unless a filter already made it ``SafeMarkdown``."""
    if isinstance(value, SafeMarkdown):
        return value
    if isinstance(value, bool):
        raise TypeError(f"a template printed the bool {value!r}, which is not card text")
    if isinstance(value, (str, int)):
        return escape_text(str(value))
    raise TypeError(
        f"a template printed a {type(value).__name__}, which is not text. "
        "Print its fields one by one."
    )


# --- Page paths and links between pages ------------------------------------------------------


def card_page(card: Card) -> str:
    """Return the path of a card's page, such as ``models/bagel.md``."""
    folder = "models" if card.kind == "model" else "papers"
    return f"{folder}/{urllib.parse.quote(card.id)}.md"


def relative_link(from_page: str, to_path: str) -> str:
    """Return the relative Markdown link from one page to another path under the docs folder."""
    anchor = ""
    if "#" in to_path:
        to_path, fragment = to_path.split("#", 1)
        anchor = "#" + fragment
    return posixpath.relpath(to_path, posixpath.dirname(from_page) or ".") + anchor


def card_title(card: Card) -> str:
    """Return the name a card is shown by: a model's name or a paper's title."""
    return card.data["name"] if card.kind == "model" else card.data["title"]


# --- Template context helpers ----------------------------------------------------------------


def format_parameter_count(count: dict[str, Any]) -> str:
    """Return one released size as text, such as 'BAGEL-7B-MoT: 14B total, 7B active'."""
    text = f"{count['variant']}: {count['total']} total"
    if "active" in count:
        text += f", {count['active']} active"
    return text


def format_parameter_counts(counts: list[dict[str, Any]]) -> str:
    """Return all released sizes as one line, separated by semicolons."""
    return "; ".join(format_parameter_count(count) for count in counts)


SIZE_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def size_value(size: str) -> float:
    """Return a parameter count such as '1.5B' as a number, for sorting."""
    return float(size[:-1]) * SIZE_UNITS[size[-1]]


def format_parameter_sizes(counts: list[dict[str, Any]]) -> str:
    """Return the distinct released sizes, smallest first, for a catalogue cell: '1B, 7B, 40B'.

    A size whose variants state an active count shows it, as in '14B (7B active)'.
    """
    sizes: dict[str, str] = {}
    for count in counts:
        label = count["total"]
        if "active" in count:
            label += f" ({count['active']} active)"
        sizes.setdefault(label, count["total"])
    return ", ".join(sorted(sizes, key=lambda label: (size_value(sizes[label]), label)))


def format_context_length(context: dict[str, Any]) -> str:
    """Return a context length as text, with thousands separators: '131,072 base pairs'."""
    return f"{context['value']:,} {context['unit']}"


def format_licences(licences: dict[str, str]) -> str:
    """Return code and weights licences as text, such as 'code Apache-2.0, weights MIT'."""
    parts = [f"{part} {licences[part]}" for part in ("code", "weights") if part in licences]
    return ", ".join(parts)


def group_models_by_modality(cards: Iterable[Card]) -> list[tuple[str, list[Card]]]:
    """Group model cards by modality in schema order, each group sorted by name, then id."""
    groups: dict[str, list[Card]] = {}
    for card in cards:
        groups.setdefault(card.data["modality"], []).append(card)
    order = list(MODALITY_TITLES)
    ordered = sorted(groups, key=lambda m: (order.index(m) if m in order else len(order), m))
    return [
        (modality, sorted(groups[modality], key=lambda c: (c.data["name"].casefold(), c.id)))
        for modality in ordered
    ]


def group_papers_by_year(cards: Iterable[Card]) -> list[tuple[int, list[Card]]]:
    """Group paper cards by year, newest first, each group sorted by title, then id."""
    groups: dict[int, list[Card]] = {}
    for card in cards:
        groups.setdefault(card.data["year"], []).append(card)
    return [
        (year, sorted(groups[year], key=lambda c: (c.data["title"].casefold(), c.id)))
        for year in sorted(groups, reverse=True)
    ]


def group_cards_by_tag(kb: KnowledgeBase) -> list[tuple[str, list[Card]]]:
    """Return every tag in alphabetical order with the cards that carry it, models first."""
    tagged: dict[str, list[Card]] = {}
    for card in kb.cards():
        for tag in card.data.get("tags", []):
            tagged.setdefault(tag, []).append(card)
    return [(tag, tagged[tag]) for tag in sorted(tagged)]


def short_authors(authors: list[str], complete: bool = True) -> str:
    """Return the author list for a catalogue row: up to two names, else the first et al.

    An incomplete list always ends in "et al.", since more authors follow.
    """
    if complete and len(authors) <= 2:
        return " and ".join(authors)
    return f"{authors[0]} et al."


# --- Field reference from the schemas --------------------------------------------------------


DEFS_FILE = "defs.schema.json"
# Key under which ``_SchemaSet.resolve`` records the title of the shared type a field uses.
_SHARED_TYPE = "x-shared-type"
# Shared types too general to name in the type column.
_UNNAMED_SHARED_TYPES = frozenset({"Text"})


class _SchemaSet:
    """The card schemas of one folder, with ``$ref`` resolution between its files."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.documents: dict[str, dict[str, Any]] = {}

    def document(self, name: str) -> dict[str, Any]:
        if name not in self.documents:
            path = self.folder / name
            self.documents[name] = json.loads(path.read_text(encoding="utf-8"))
        return self.documents[name]

    def resolve(self, schema: dict[str, Any], base: str) -> tuple[dict[str, Any], str]:
        """Return ``schema`` merged with what its ``$ref`` points at, and the target's file.

        Keywords next to ``$ref`` (here ``title`` and ``description``) win over the target's,
        as in JSON Schema 2020-12 where they apply to the same instance.
        """
        while "$ref" in schema:
            target_file, _, pointer = schema["$ref"].partition("#")
            target_file = target_file or base
            target: Any = self.document(target_file)
            for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
                target = target[part.replace("~1", "/").replace("~0", "~")]
            merged = dict(target)
            merged.update({k: v for k, v in schema.items() if k != "$ref"})
            if target_file == DEFS_FILE and "title" in target:
                merged[_SHARED_TYPE] = target["title"]
            schema, base = merged, target_file
        return schema, base


def _describe_type(schema: dict[str, Any], schemas: _SchemaSet, base: str) -> str:
    """Return a field's type in words, with its allowed values and format."""
    if "enum" in schema:
        return "one of " + ", ".join(f"'{value}'" for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        item, item_base = schemas.resolve(schema.get("items", {}), base)
        return "list of " + _describe_type(item, schemas, item_base)
    details = []
    if schema.get(_SHARED_TYPE) and schema[_SHARED_TYPE] not in _UNNAMED_SHARED_TYPES:
        details.append(schema[_SHARED_TYPE])
    if "format" in schema:
        details.append(f"format {schema['format']}")
    if "minimum" in schema and "maximum" in schema:
        details.append(f"{schema['minimum']} to {schema['maximum']}")
    elif "minimum" in schema:
        details.append(f"at least {schema['minimum']}")
    return f"{kind} ({', '.join(details)})" if details else kind


def _field_rows(
    schema: dict[str, Any], schemas: _SchemaSet, base: str, prefix: str = ""
) -> list[dict[str, str]]:
    """Return one row per property of an object schema, depth first, in schema order."""
    rows = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        resolved, prop_base = schemas.resolve(prop, base)
        path = f"{prefix}{name}"

        # The fields of a nested object, or of each object in a list, follow the field itself.
        child, child_base, child_prefix = resolved, prop_base, path + "."
        if resolved.get("type") == "array":
            child, child_base = schemas.resolve(resolved.get("items", {}), prop_base)
            child_prefix = path + "[]."

        rows.append(
            {
                "field": path,
                "title": resolved.get("title", name),
                "type": _describe_type(resolved, schemas, prop_base),
                "required": "yes" if name in required else "no",
                "description": resolved.get("description", "")
                + _one_of_note(child, per_entry=child is not resolved),
            }
        )
        if child.get("type") == "object":
            rows.extend(_field_rows(child, schemas, child_base, child_prefix))
    return rows


def _one_of_note(schema: dict[str, Any], per_entry: bool = False) -> str:
    """Describe a ``oneOf`` of ``required`` alternatives, such as a resource's path or url."""
    options = [alt.get("required", []) for alt in schema.get("oneOf", [])]
    if not options or not all(len(option) == 1 for option in options):
        return ""
    subject = "Each entry gives" if per_entry else "Give"
    return f" {subject} exactly one of: " + ", ".join(option[0] for option in options) + "."


def field_reference(schema_dir: Path) -> list[dict[str, Any]]:
    """Return, per card kind, the schema's title, description and one row per field."""
    schemas = _SchemaSet(schema_dir)
    sections = []
    for file_name, heading in SCHEMA_PAGES:
        root, base = schemas.resolve(schemas.document(file_name), file_name)
        sections.append(
            {
                "heading": heading,
                "file": file_name,
                "description": root.get("description", ""),
                "rows": _field_rows(root, schemas, base),
            }
        )
    return sections


def shared_types(schema_dir: Path) -> list[dict[str, str]]:
    """Return the title, type and description of each shared definition, in file order."""
    schemas = _SchemaSet(schema_dir)
    rows = []
    for name, definition in schemas.document(DEFS_FILE).get("$defs", {}).items():
        resolved, base = schemas.resolve(definition, DEFS_FILE)
        rows.append(
            {
                "name": name,
                "title": resolved.get("title", name),
                "type": _describe_type(resolved, schemas, base),
                "description": resolved.get("description", "") + _one_of_note(resolved),
            }
        )
    return rows


# --- Rendering -------------------------------------------------------------------------------


def make_environment() -> jinja2.Environment:
    """Create the Jinja2 environment with this module's escaping filters."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(TEMPLATE_PACKAGE, TEMPLATE_FOLDER),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        finalize=_finalize,
    )
    env.filters.update(
        text=escape_text,
        paragraphs=escape_paragraphs,
        pre=preformatted,
        link=link,
        front_matter_title=front_matter_title,
    )
    env.globals.update(
        MODALITY_TITLES=MODALITY_TITLES,
        VERIFICATION_TITLES=VERIFICATION_TITLES,
        SOURCE_KIND_TITLES=SOURCE_KIND_TITLES,
        card_title=card_title,
        format_parameter_counts=format_parameter_counts,
        format_parameter_sizes=format_parameter_sizes,
        format_context_length=format_context_length,
        format_licences=format_licences,
        short_authors=short_authors,
        identifier_link=identifier_link,
        code=inline_code,
    )
    return env


def _page_helpers(kb: KnowledgeBase, page: str, docs_prefix: str | None) -> dict[str, Any]:
    """Return the link helpers for one page; they need the page's own path."""

    def card_link(card: Card) -> SafeMarkdown:
        target = relative_link(page, card_page(card))
        return SafeMarkdown(f"[{escape_text(card_title(card))}]({target})")

    def model_link(model_id: str) -> SafeMarkdown:
        if model_id in kb.models:
            return card_link(kb.models[model_id])
        return escape_text(model_id)

    def page_link(path: str, text: str) -> SafeMarkdown:
        return SafeMarkdown(f"[{escape_text(text)}]({relative_link(page, path)})")

    def tag_link(tag: str) -> SafeMarkdown:
        return page_link(f"reference/tags.md#{tag}", tag)

    def resource_link(resource: dict[str, Any]) -> SafeMarkdown:
        if "url" in resource:
            return link(resource["url"], resource["title"])
        # "docs/../README.md" is a file outside the docs folder, so the written path is
        # normalised before the prefix is compared.
        path = posixpath.normpath(resource["path"])
        if docs_prefix is not None and path.startswith(docs_prefix):
            return page_link(urllib.parse.quote(path[len(docs_prefix) :]), resource["title"])
        # NOTE: files outside the docs folder are not part of the site, so they get no link.
        return SafeMarkdown(f"{escape_text(resource['title'])} ({escape_text(path)})")

    return {
        "page": page,
        "card_link": card_link,
        "model_link": model_link,
        "page_link": page_link,
        "tag_link": tag_link,
        "resource_link": resource_link,
    }


def render_pages(
    kb: KnowledgeBase, *, schema_dir: Path | None = None, docs_prefix: str | None = "docs/"
) -> dict[str, str]:
    """Render every page of the knowledge base as ``{path: markdown}``, sorted by path.

    ``schema_dir`` defaults to ``kb/schemas`` under the knowledge base root. ``docs_prefix``
    is the repository path of the docs folder, used to turn resource paths into page links.
    None means the docs folder is outside the repository, so no resource gets a page link.
    """
    env = make_environment()
    schema_dir = schema_dir if schema_dir is not None else kb.root / "kb" / "schemas"
    pages: dict[str, str] = {}

    def render(template: str, page: str, **context: Any) -> None:
        if page in pages:
            # The reserved-id rule keeps a card from reaching this.
            raise ValueError(f"two pages would be written to {page}")
        helpers = _page_helpers(kb, page, docs_prefix)
        pages[page] = env.get_template(template).render(kb=kb, **helpers, **context)

    model_groups = group_models_by_modality(kb.models.values())
    render("models_index.md.j2", "models/index.md", groups=model_groups)
    for model_id in sorted(kb.models):
        card = kb.models[model_id]
        render(
            "model.md.j2",
            card_page(card),
            card=card,
            m=card.data,
            papers=kb.papers_for_model(model_id),
        )

    paper_groups = group_papers_by_year(kb.papers.values())
    render("papers_index.md.j2", "papers/index.md", groups=paper_groups)
    for paper_id in sorted(kb.papers):
        card = kb.papers[paper_id]
        render(
            "paper.md.j2",
            card_page(card),
            card=card,
            p=card.data,
            models=kb.models_for_paper(paper_id),
        )

    render(
        "fields.md.j2",
        "reference/fields.md",
        sections=field_reference(schema_dir),
        shared=shared_types(schema_dir),
    )
    render("tags.md.j2", "reference/tags.md", tags=group_cards_by_tag(kb))
    return dict(sorted(pages.items()))
