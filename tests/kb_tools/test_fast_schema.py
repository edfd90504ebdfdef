"""The quick validity check must accept exactly the cards that jsonschema accepts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from kb_tools.fast_schema import compile_quick_check, inline_refs
from kb_tools.load import load_card_file
from kb_tools.schema import load_schemas

from kb_helpers import CASES_DIR, REPO_ROOT, SCHEMA_DIR

MUTATIONS = ("delete", None, 7, 1.5, True, " padded", "", [], {}, "javascript:x")


def _all_card_files() -> list[tuple[str, Path]]:
    files = []
    for folder in [REPO_ROOT / "kb", CASES_DIR / "valid" / "kb", *sorted((CASES_DIR / "invalid").glob("*/kb"))]:
        files += [("model", p) for p in sorted(folder.glob("model_cards/*.yaml"))]
        files += [("paper", p) for p in sorted(folder.glob("paper_cards/*.yaml"))]
    return files


def _nodes(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _nodes(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _nodes(child, (*path, index))


def _mutants(data: dict):
    """Yield copies of ``data`` with one node deleted, replaced, or given an unknown key."""
    for path in _nodes(data):
        if not path:
            continue
        for mutation in MUTATIONS:
            mutant = copy.deepcopy(data)
            parent = mutant
            for step in path[:-1]:
                parent = parent[step]
            if mutation == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(mutation)
            yield mutant
        target = copy.deepcopy(data)
        node = target
        for step in path:
            node = node[step]
        if isinstance(node, dict):
            node["zzz_unknown"] = "x"
            yield target


def _full_is_valid(schemas, kind: str, data) -> bool:
    return schemas.validators[kind].is_valid(data)


def test_quick_check_is_compiled_code():
    schemas, _ = load_schemas(SCHEMA_DIR)

    assert {name: check.__qualname__ for name, check in schemas.quick_checks.items()} == {
        "model": "compile_quick_check.<locals>.quick_check",
        "paper": "compile_quick_check.<locals>.quick_check",
    }


def test_quick_check_agrees_on_every_test_card():
    schemas, _ = load_schemas(SCHEMA_DIR)
    files = _all_card_files()
    checked = 0

    for kind, path in files:
        loaded = load_card_file(path)
        if loaded.data is None:
            continue
        checked += 1
        assert schemas.quick_checks[kind](loaded.data) == _full_is_valid(schemas, kind, loaded.data), path

    assert checked >= 30


@pytest.mark.parametrize(("kind", "card"), [
    ("model", CASES_DIR / "valid" / "kb" / "model_cards" / "helix-lm.yaml"),
    ("paper", CASES_DIR / "valid" / "kb" / "paper_cards" / "helix-2025.yaml"),
])
def test_quick_check_agrees_on_mutants(kind: str, card: Path):
    schemas, _ = load_schemas(SCHEMA_DIR)
    data = load_card_file(card).data
    disagreements = []
    count = 0

    for mutant in _mutants(data):
        count += 1
        quick = schemas.quick_checks[kind](mutant)
        if quick != _full_is_valid(schemas, kind, mutant):
            disagreements.append(mutant)

    assert count > 300
    assert disagreements == []


def test_quick_check_falls_back_for_unconvertible_schema():
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "allOf": [{"properties": {"b": {"type": "integer"}}}],
        "unevaluatedProperties": False,
    }

    check = compile_quick_check(lambda ref, base: ({}, base), schema, "x.json")

    assert check.__qualname__.endswith("Validator.is_valid")
    assert check({"a": "x", "b": 1}) is True
    assert check({"a": "x", "c": 1}) is False


def test_inline_refs_keeps_property_names_and_data():
    defs = {"$defs": {"text": {"title": "Text", "type": "string", "minLength": 1}}}
    schema = {
        "title": "Card",
        "properties": {
            "title": {"$ref": "defs.json#/$defs/text", "title": "Title", "description": "Shown."},
            "kind": {"enum": ["title", "description"], "description": "Kind."},
        },
    }

    def lookup(ref: str, base: str):
        return defs["$defs"][ref.rsplit("/", 1)[1]], "defs.json"

    assert inline_refs(lookup, schema, "card.json", ()) == {
        "properties": {
            "title": {"type": "string", "minLength": 1},
            "kind": {"enum": ["title", "description"]},
        },
    }
