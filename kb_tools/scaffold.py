"""Scaffold a new card from its schema: every required field, each under a comment from the schema.

Every placeholder is left empty (YAML null), which no required field accepts, so a new card
fails validation exactly at the placeholders until they are filled in.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from kb_tools.cards import CARD_DIRS
from kb_tools.load import escape_pointer_token
from kb_tools.rules import CARD_SUFFIX, RESERVED_IDS
from kb_tools.schema import DEFS_FILE, SCHEMA_FILES, SchemaSet

COMMENT_WIDTH = 96
INDENT = "  "


class ScaffoldError(ValueError):
    """A card cannot be created: the id is invalid or a card with that id exists."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


@dataclass
class Scaffold:
    """The text of a new card and the JSON pointers of the placeholders left to fill in."""

    text: str
    placeholders: list[str] = field(default_factory=list)


def check_card_id(schemas: SchemaSet, card_id: str) -> None:
    """Raise ScaffoldError unless ``card_id`` is a valid card id by the schema."""
    id_schema, _ = schemas.lookup("#/$defs/card_id", DEFS_FILE)
    if not Draft202012Validator(id_schema).is_valid(card_id):
        raise ScaffoldError(f"invalid card id '{card_id}'", f"{id_schema['title']}: {id_schema['description']}")
    if card_id in RESERVED_IDS:
        raise ScaffoldError(f"card id '{card_id}' is reserved because its page would replace the catalogue page",
                            "choose another id")


def scaffold_card(schemas: SchemaSet, kind: str, card_id: str) -> Scaffold:
    """Return the YAML text of a new ``kind`` card with id ``card_id``."""
    schema, base = schemas.resolve(schemas.documents[SCHEMA_FILES[kind]], SCHEMA_FILES[kind])
    scaffold = Scaffold("")
    lines = [
        f"# {schema.get('title', kind.title())}: {card_id}",
        *_comment(schema.get("description", ""), ""),
        "# Fill in every empty field, then run 'kb validate'.",
        "",
    ]
    lines += _object_lines(schemas, schema, base, "", "", scaffold, card_id)

    optional = [name for name in schema.get("properties", {}) if name not in schema.get("required", [])]
    if optional:
        lines.append("")
        lines += _comment("Optional fields: " + ", ".join(optional) + ".", "")
    scaffold.text = "\n".join(lines) + "\n"
    return scaffold


def create_card(root: Path, schemas: SchemaSet, kind: str, card_id: str) -> Path:
    """Write a new card file under ``root`` and return its path; raise ScaffoldError if it cannot."""
    check_card_id(schemas, card_id)
    for other_kind, folder in CARD_DIRS.items():
        existing = root / "kb" / folder / f"{card_id}{CARD_SUFFIX}"
        if existing.exists():
            raise ScaffoldError(f"a {other_kind} card with id '{card_id}' already exists: {existing.relative_to(root).as_posix()}",
                                "choose another id; ids are unique across models and papers")
    path = root / "kb" / CARD_DIRS[kind] / f"{card_id}{CARD_SUFFIX}"
    text = scaffold_card(schemas, kind, card_id).text
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise ScaffoldError(f"file already exists: {path.relative_to(root).as_posix()}") from None
    except OSError as error:
        raise ScaffoldError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def _object_lines(schemas: SchemaSet, schema: dict[str, Any], base: str, indent: str, pointer: str,
                  scaffold: Scaffold, card_id: str) -> list[str]:
    """Return the lines of a mapping with the required fields of ``schema``, in schema order."""
    properties = schema.get("properties", {})
    required = [name for name in properties if name in schema.get("required", [])]
    required += [name for name in schema.get("required", []) if name not in properties]
    lines = []
    for name in required:
        child_schema, child_base = schemas.resolve(properties.get(name, {}), base)
        child_pointer = f"{pointer}/{escape_pointer_token(name)}"
        lines += _comment(_describe(child_schema), indent)
        if pointer == "" and name == "id":
            lines.append(f"{indent}id: {card_id}")
            continue
        lines += _value_lines(schemas, child_schema, child_base, indent, name, child_pointer, scaffold, card_id)
    return lines


def _value_lines(schemas: SchemaSet, schema: dict[str, Any], base: str, indent: str, name: str, pointer: str,
                 scaffold: Scaffold, card_id: str) -> list[str]:
    """Return the lines for one field: nested required fields where the schema has them, else an empty value."""
    if schema.get("type") == "object" and schema.get("required"):
        return [f"{indent}{name}:", *_object_lines(schemas, schema, base, indent + INDENT, pointer, scaffold, card_id)]

    items, items_base = schemas.resolve(schema.get("items", {}), base) if schema.get("type") == "array" else ({}, base)
    if items.get("type") == "object" and items.get("required") and schema.get("minItems", 0) >= 1:
        item_lines = _object_lines(schemas, items, items_base, indent + INDENT * 2, pointer + "/0", scaffold, card_id)
        return [f"{indent}{name}:", *_comment(_describe(items), indent + INDENT), f"{indent}{INDENT}-", *item_lines]

    scaffold.placeholders.append(pointer)
    return [f"{indent}{name}:"]


def _describe(schema: dict[str, Any]) -> str:
    text = ": ".join(part for part in (schema.get("title"), schema.get("description")) if part)
    if "enum" in schema:
        text += " One of: " + ", ".join(str(value) for value in schema["enum"]) + "."
    elif schema.get("type") == "array":
        text += " A list: write each entry on its own line, starting with '- '."
    return text


def _comment(text: str, indent: str) -> list[str]:
    if not text:
        return []
    return textwrap.wrap(text, COMMENT_WIDTH - len(indent), initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ", break_on_hyphens=False)
