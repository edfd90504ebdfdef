"""The card schemas themselves, and how validation errors become diagnostics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from kb_tools import schema
from kb_tools.load import load_yaml_bytes
from kb_tools.schema import ALL_SCHEMA_FILES, check_card, formats_in_use, load_schemas

from kb_helpers import SCHEMA_DIR

MODEL = """\
id: demo-model
name: Demo Model
modality: genetics
summary: A small DNA language model.
architecture:
  type: decoder-only transformer
papers:
  - demo-paper
verification:
  status: unverified
sources:
  - title: Demo paper
    url: https://example.org/demo
    kind: paper
"""


def _property_schemas(node, pointer=""):
    """Yield (pointer, schema) for every entry of every "properties" in a schema document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for name, child in value.items():
                    yield f"{pointer}/properties/{name}", child
            yield from _property_schemas(value, f"{pointer}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _property_schemas(value, f"{pointer}/{index}")


def _check_model(text: str):
    schemas, problems = load_schemas(SCHEMA_DIR)
    assert problems == []
    loaded = load_yaml_bytes(text.encode(), Path("kb/model_cards/demo-model.yaml"))
    assert loaded.diagnostics == []
    return check_card(schemas, "model", loaded)


@pytest.mark.parametrize("name", ALL_SCHEMA_FILES)
def test_schema_valid_against_metaschema(name: str):
    document = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))

    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert list(Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(document)) == []


@pytest.mark.parametrize("name", ALL_SCHEMA_FILES)
def test_every_property_has_title_and_description(name: str):
    document = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    properties = list(_property_schemas(document))

    assert properties
    for pointer, child in properties:
        assert isinstance(child.get("title"), str) and child["title"].strip(), f"{name}#{pointer} has no title"
        assert isinstance(child.get("description"), str) and child["description"].strip(), \
            f"{name}#{pointer} has no description"


def test_repository_schemas_load_without_problems():
    schemas, problems = load_schemas(SCHEMA_DIR)

    assert problems == []
    assert set(schemas.validators) == {"model", "paper"}


def test_every_format_in_use_has_a_checker():
    schemas, _ = load_schemas(SCHEMA_DIR)

    assert formats_in_use(schemas) == {"uri", "date", "email"}
    assert formats_in_use(schemas) <= set(Draft202012Validator.FORMAT_CHECKER.checkers)


def test_missing_format_checker_fails_loudly(tmp_path: Path, monkeypatch):
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas")
    without_uri = FormatChecker()
    del without_uri.checkers["uri"]
    monkeypatch.setattr(Draft202012Validator, "FORMAT_CHECKER", without_uri)
    schema._load_schemas_cached.cache_clear()

    schemas, problems = load_schemas(tmp_path / "schemas")

    assert schemas is None
    assert problems
    assert {d.rule for d in problems} == {"schema-format"}
    assert all("'uri' has no checker" in d.message for d in problems)
    assert all(d.hint == "install rfc3987 into the environment" for d in problems)
    schema._load_schemas_cached.cache_clear()


def test_schema_not_json(tmp_path: Path):
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas")
    (tmp_path / "schemas" / "defs.schema.json").write_text('{\n  "title": "x",\n}\n')

    schemas, problems = load_schemas(tmp_path / "schemas")

    assert schemas is None
    assert [(d.rule, d.line, d.column) for d in problems] == [("schema-file", 3, 1)]


def test_schema_invalid_against_metaschema(tmp_path: Path):
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas")
    path = tmp_path / "schemas" / "paper_card.schema.json"
    document = json.loads(path.read_text())
    document["properties"]["year"]["type"] = "integr"
    path.write_text(json.dumps(document))

    schemas, problems = load_schemas(tmp_path / "schemas")

    assert schemas is None
    assert [d.rule for d in problems] == ["schema-file"]
    assert problems[0].pointer == "/properties/year/type"


def test_schema_unresolvable_ref(tmp_path: Path):
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas")
    path = tmp_path / "schemas" / "paper_card.schema.json"
    document = json.loads(path.read_text())
    document["properties"]["title"]["$ref"] = "defs.schema.json#/$defs/no_such_def"
    path.write_text(json.dumps(document))

    schemas, problems = load_schemas(tmp_path / "schemas")

    assert schemas is None
    assert [(d.rule, d.pointer) for d in problems] == [("schema-file", "/properties/title/$ref")]


def test_schemas_cached_until_changed(tmp_path: Path):
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas")
    first, _ = load_schemas(tmp_path / "schemas")
    second, _ = load_schemas(tmp_path / "schemas")
    (tmp_path / "schemas" / "defs.schema.json").write_text("{}")
    third, problems = load_schemas(tmp_path / "schemas")

    assert first is second
    assert third is None
    assert problems


def test_valid_card_has_no_diagnostics():
    assert _check_model(MODEL) == []


def test_unknown_nested_key_did_you_mean():
    [diagnostic] = _check_model(MODEL.replace("    kind: paper", "    kind: paper\n    titel: x"))

    assert (diagnostic.rule, diagnostic.line, diagnostic.column) == ("schema.unknown-key", 15, 5)
    assert diagnostic.pointer == "/sources/0/titel"
    assert diagnostic.message == "unknown field 'titel' in 'sources/0'"
    assert diagnostic.hint == "did you mean 'title'?"


def test_unknown_key_without_close_match_lists_fields():
    [diagnostic] = _check_model(MODEL.replace("  status: unverified", "  status: unverified\n  zzz: 1"))

    assert diagnostic.message == "unknown field 'zzz' in 'verification'"
    assert diagnostic.hint == "allowed fields here: checked_by, checked_on, contact, notes, status"


def test_enum_did_you_mean():
    [diagnostic] = _check_model(MODEL.replace("status: unverified", "status: verifed"))

    assert diagnostic.rule == "schema.enum"
    assert diagnostic.message == "'verification/status': 'verifed' is not an allowed value"
    assert diagnostic.hint == "did you mean 'verified'? allowed values: unverified, partially_verified, verified"


def test_pattern_message_uses_schema_description():
    [diagnostic] = _check_model(MODEL.replace("  - demo-paper", "  - Demo Paper"))

    assert (diagnostic.rule, diagnostic.line, diagnostic.column) == ("schema.pattern", 8, 5)
    assert diagnostic.message == "'papers/0': 'Demo Paper' is not a valid card id"
    assert diagnostic.hint.startswith("Card id: Lower-case letters and digits")


def test_required_names_field_and_description():
    [diagnostic] = _check_model(MODEL.replace("name: Demo Model\n", ""))

    assert (diagnostic.rule, diagnostic.line, diagnostic.column) == ("schema.required", 1, 1)
    assert diagnostic.pointer == "/name"
    assert diagnostic.message == "missing required field 'name' in the card"
    assert diagnostic.hint == "add 'name:' (Name: The model's name as its authors write it.)"


def test_several_missing_fields_each_reported():
    diagnostics = _check_model(MODEL.replace("name: Demo Model\n", "").replace("modality: genetics\n", ""))

    assert sorted(d.pointer for d in diagnostics) == ["/modality", "/name"]


def test_type_error_suggests_quotes():
    [diagnostic] = _check_model(MODEL.replace("name: Demo Model", "name: 1.5"))

    assert diagnostic.message == "'name' must be text, found number 1.5"
    assert diagnostic.hint == 'put the value in quotes so that it stays text, such as "1.5"'


def test_empty_enum_field_lists_values():
    [diagnostic] = _check_model(MODEL.replace("modality: genetics", "modality:"))

    assert diagnostic.message == "'modality' is empty but must be text"
    assert diagnostic.hint.endswith("Allowed values: genetics, brain, behaviour, clinical, multimodal, general.")


def test_bad_email_format():
    [diagnostic] = _check_model(MODEL.replace("  status: unverified", "  status: unverified\n  contact: nobody"))

    assert (diagnostic.rule, diagnostic.line, diagnostic.column) == ("schema.format", 11, 12)
    assert diagnostic.message == "'verification/contact': 'nobody' is not a valid email address"


def test_url_failing_format_and_pattern_is_one_line():
    diagnostics = _check_model(MODEL.replace("url: https://example.org/demo", "url: not a url"))

    assert [(d.rule, d.pointer) for d in diagnostics] == [("schema.format", "/sources/0/url")]


def test_one_of_is_one_line():
    text = MODEL + "resources:\n  - title: Both\n    path: docs/x.md\n    url: https://example.org\n"
    [diagnostic] = _check_model(text)

    assert (diagnostic.rule, diagnostic.line, diagnostic.column) == ("schema.oneOf", 16, 5)
    assert diagnostic.message == "'resources/0' must have exactly one of 'path' or 'url'"


def test_nested_error_inside_one_of_branch_position():
    text = MODEL + "resources:\n  - title: ' padded'\n    url: https://example.org\n"
    [diagnostic] = _check_model(text)

    assert (diagnostic.rule, diagnostic.line, diagnostic.column) == ("schema.pattern", 16, 12)
    assert diagnostic.hint == "Text: Non-empty text without leading or trailing whitespace."


def test_type_error_on_list_has_no_trailing_space():
    [diagnostic] = _check_model(MODEL.replace("name: Demo Model", "name: [a, b]"))

    assert diagnostic.message == "'name' must be text, found a list"


def test_number_in_enum_field_lists_values():
    [diagnostic] = _check_model(MODEL.replace("  status: unverified", "  status: 3"))

    assert diagnostic.message == "'verification/status' must be text, found whole number 3"
    assert diagnostic.hint == "allowed values: unverified, partially_verified, verified"
