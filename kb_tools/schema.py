"""Card schemas: loading them, checking them, and validating cards against them.

The schemas are JSON Schema Draft 2020-12 files in ``kb/schemas/``. They refer to each other by
file name (``defs.schema.json#/$defs/text``), so each file is registered in a
``referencing.Registry`` under its file name.

Every validation error becomes one ``Diagnostic`` at the YAML line and column of the offending
node. Rule ids are ``schema.<keyword>`` after the JSON Schema keyword that failed
(``schema.required``, ``schema.enum``, ``schema.pattern``, ``schema.format``, ``schema.type``
and so on), except ``schema.unknown-key`` for a field the schema does not define. Problems
with the schema files themselves are ``schema-file`` (unreadable, not JSON, invalid against the
2020-12 metaschema, a ``$ref`` that does not resolve) and ``schema-format`` (a ``format`` that
no installed checker validates, which jsonschema would otherwise pass silently).
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match, relevance
from referencing.jsonschema import DRAFT202012

from kb_tools.diagnostics import Diagnostic, Severity
from kb_tools.fast_schema import compile_quick_check
from kb_tools.load import LoadResult, escape_pointer_token

log = logging.getLogger(__name__)

# Schema file for each card kind, in kb/schemas/.
SCHEMA_FILES = {"model": "model_card.schema.json", "paper": "paper_card.schema.json"}
DEFS_FILE = "defs.schema.json"
ALL_SCHEMA_FILES = (DEFS_FILE, *SCHEMA_FILES.values())

# The package that gives jsonschema a checker for each format, for the hint when one is missing.
FORMAT_PACKAGES = {"uri": "rfc3987", "uri-reference": "rfc3987", "date-time": "rfc3339-validator"}

# Words for JSON types in messages, in the terms a YAML card's author uses.
TYPE_WORDS = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping of fields",
    "null": "empty",
}

# Words for the values of each "format" in messages.
FORMAT_WORDS = {"uri": "URL", "date": "date (YYYY-MM-DD)", "email": "email address"}

# At most this many characters of a bad value are quoted in a message.
MAX_QUOTED_CHARS = 60


@dataclass(frozen=True)
class SchemaSet:
    """The loaded card schemas, their registry and one compiled validator per card kind."""

    directory: Path
    documents: dict[str, dict[str, Any]]
    registry: referencing.Registry
    validators: dict[str, Draft202012Validator]
    # Fast yes/no checks compiled from the same schemas (see ``kb_tools.fast_schema``). Only a
    # card that fails one goes through ``validators``, which word the errors.
    quick_checks: dict[str, Callable[[Any], bool]]

    def lookup(self, ref: str, base: str) -> tuple[dict[str, Any], str]:
        """Resolve ``ref`` as written in the schema file ``base``, and return the target and its file."""
        resolved = self.registry.resolver(base_uri=base).lookup(ref)
        target_file = ref.split("#", 1)[0] or base
        return resolved.contents, target_file

    def resolve(self, schema: dict[str, Any], base: str) -> tuple[dict[str, Any], str]:
        """Follow ``$ref`` until the schema has its own keywords. Annotations on the referrer win."""
        merged = dict(schema)
        while "$ref" in merged:
            target, base = self.lookup(merged.pop("$ref"), base)
            merged = {**target, **merged}
        return merged, base


def load_schemas(schema_dir: Path) -> tuple[SchemaSet | None, list[Diagnostic]]:
    """Load, check and compile the card schemas in ``schema_dir``.

    Return the schema set, or None with diagnostics when any schema file is unusable. The result
    is cached per directory until a schema file changes.
    """
    stamps = []
    for name in ALL_SCHEMA_FILES:
        try:
            stat = (schema_dir / name).stat()
            stamps.append((name, stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((name, -1, -1))
    return _load_schemas_cached(schema_dir.resolve(), tuple(stamps))


@functools.lru_cache(maxsize=8)
def _load_schemas_cached(schema_dir: Path, stamps: tuple) -> tuple[SchemaSet | None, list[Diagnostic]]:
    del stamps  # Only part of the cache key.
    documents, diagnostics = _read_schema_files(schema_dir)
    if diagnostics:
        return None, diagnostics

    registry = referencing.Registry().with_resources(
        (name, referencing.Resource.from_contents(doc, default_specification=DRAFT202012))
        for name, doc in documents.items()
    )
    for name, doc in documents.items():
        diagnostics += _check_against_metaschema(schema_dir / name, doc)
        diagnostics += _check_refs(schema_dir / name, doc, registry)
        diagnostics += _check_formats(schema_dir / name, doc)
    if diagnostics:
        return None, diagnostics

    validators = {
        kind: Draft202012Validator(documents[name], registry=registry,
                                   format_checker=Draft202012Validator.FORMAT_CHECKER)
        for kind, name in SCHEMA_FILES.items()
    }
    schemas = SchemaSet(schema_dir, documents, registry, validators, {})
    for kind, name in SCHEMA_FILES.items():
        schemas.quick_checks[kind] = compile_quick_check(schemas.lookup, documents[name], name)
    log.debug("loaded schemas from %s", schema_dir)
    return schemas, []




def _read_schema_files(schema_dir: Path) -> tuple[dict[str, dict[str, Any]], list[Diagnostic]]:
    documents: dict[str, dict[str, Any]] = {}
    diagnostics = []
    for name in ALL_SCHEMA_FILES:
        path = schema_dir / name
        try:
            documents[name] = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            diagnostics.append(Diagnostic(path, 0, 0, "schema-file", f"cannot read schema: {error.strerror or error}",
                                          Severity.ERROR, "", "restore the file from the repository"))
        except UnicodeDecodeError as error:
            diagnostics.append(Diagnostic(path, 0, 0, "schema-file", f"schema is not valid UTF-8: {error}"))
        except json.JSONDecodeError as error:
            diagnostics.append(Diagnostic(path, error.lineno, error.colno, "schema-file",
                                          f"schema is not valid JSON: {error.msg}"))
    return documents, diagnostics


def _check_against_metaschema(path: Path, document: dict[str, Any]) -> list[Diagnostic]:
    meta = Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [
        Diagnostic(path, 0, 0, "schema-file", f"schema is invalid against the Draft 2020-12 metaschema: {error.message}",
                   Severity.ERROR, _pointer(error.absolute_path))
        for error in meta.iter_errors(document)
    ]


def _check_refs(path: Path, document: dict[str, Any], registry: referencing.Registry) -> list[Diagnostic]:
    resolver = registry.resolver(base_uri=path.name)
    found = []
    for pointer, node in _walk_schema(document):
        ref = node.get("$ref")
        if not isinstance(ref, str):
            continue
        try:
            resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:
            found.append(Diagnostic(path, 0, 0, "schema-file", f"$ref '{ref}' does not resolve",
                                    Severity.ERROR, pointer + "/$ref"))
    return found


def _check_formats(path: Path, document: dict[str, Any]) -> list[Diagnostic]:
    available = Draft202012Validator.FORMAT_CHECKER.checkers
    found = []
    for pointer, node in _walk_schema(document):
        name = node.get("format")
        if isinstance(name, str) and name not in available:
            package = FORMAT_PACKAGES.get(name)
            hint = f"install {package} into the environment" if package else "remove the format or install a checker for it"
            found.append(Diagnostic(path, 0, 0, "schema-format",
                                    f"format '{name}' has no checker installed, so values would not be checked",
                                    Severity.ERROR, pointer + "/format", hint))
    return found


def _walk_schema(node: Any, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield every subschema (every dict) in a schema document with its JSON pointer."""
    if isinstance(node, dict):
        yield pointer, node
        for key, value in node.items():
            yield from _walk_schema(value, f"{pointer}/{escape_pointer_token(str(key))}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk_schema(value, f"{pointer}/{index}")


def formats_in_use(schemas: SchemaSet) -> set[str]:
    """Return every ``format`` value that the schema files use."""
    return {
        node["format"]
        for document in schemas.documents.values()
        for _, node in _walk_schema(document)
        if isinstance(node.get("format"), str)
    }


# --- Validating cards ---------------------------------------------------------------------


def check_card(schemas: SchemaSet, kind: str, loaded: LoadResult) -> list[Diagnostic]:
    """Validate a loaded card against the schema of its kind, and return one diagnostic per problem."""
    if schemas.quick_checks[kind](loaded.data):
        return []
    validator = schemas.validators[kind]
    diagnostics: dict[str, Diagnostic] = {}
    errors = sorted(validator.iter_errors(loaded.data), key=relevance)
    for error in errors:
        for diagnostic in _diagnostics_for(error, schemas, SCHEMA_FILES[kind], loaded):
            # One line per node: a value that fails both "format" and "pattern" is one mistake.
            diagnostics.setdefault(diagnostic.pointer, diagnostic)
    return list(diagnostics.values())


def _diagnostics_for(error: ValidationError, schemas: SchemaSet, root_file: str, loaded: LoadResult) -> list[Diagnostic]:
    keyword = error.validator
    if keyword in ("oneOf", "anyOf"):
        exclusive = _exclusive_required_message(error)
        if exclusive is not None:
            return [_diagnostic(loaded, error, f"schema.{keyword}", exclusive, _field_hint(error, schemas, root_file))]
        if error.context:
            return _diagnostics_for(best_match(error.context), schemas, root_file, loaded)
    if keyword in ("unevaluatedProperties", "additionalProperties"):
        return _unknown_key_diagnostics(error, loaded)
    if keyword == "required":
        return [_required_diagnostic(error, schemas, root_file, loaded)]

    message, hint = _describe(error, schemas, root_file)
    return [_diagnostic(loaded, error, f"schema.{keyword}", message, hint)]


def _diagnostic(loaded: LoadResult, error: ValidationError, rule: str, message: str, hint: str,
                pointer: str | None = None, key: bool = False) -> Diagnostic:
    pointer = _pointer(error.absolute_path) if pointer is None else pointer
    line, column = loaded.position_of(pointer, key=key)
    return Diagnostic(loaded.path, line, column, rule, message, Severity.ERROR, pointer, hint)


def _unknown_key_diagnostics(error: ValidationError, loaded: LoadResult) -> list[Diagnostic]:
    allowed = sorted(error.schema.get("properties", {}))
    base = _pointer(error.absolute_path)
    found = []
    for key in error.instance:
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean '{close[0]}'?"
        else:
            hint = "allowed fields here: " + ", ".join(allowed)
        found.append(_diagnostic(loaded, error, "schema.unknown-key", f"unknown field '{key}' in {_label(base)}", hint,
                                 pointer=f"{base}/{escape_pointer_token(key)}", key=True))
    return found


def _required_diagnostic(error: ValidationError, schemas: SchemaSet, root_file: str, loaded: LoadResult) -> Diagnostic:
    # jsonschema reports each missing name as its own error, and the message quotes the name.
    missing = [n for n in error.validator_value if n not in error.instance]
    name = next((n for n in missing if repr(n) in error.message), missing[0] if missing else "")
    base = _pointer(error.absolute_path)
    field_schema = _field_schema(error, schemas, root_file, extra=("properties", name))
    about = _title_and_description(field_schema)
    hint = f"add '{name}:'" + (f" ({about})" if about else "")
    return _diagnostic(loaded, error, "schema.required", f"missing required field '{name}' in {_label(base)}", hint,
                       pointer=f"{base}/{escape_pointer_token(name)}")


def _exclusive_required_message(error: ValidationError) -> str | None:
    """Word a oneOf/anyOf whose branches each only require one field as "exactly one of"."""
    branches = error.validator_value
    if not all(isinstance(b, dict) and set(b) == {"required"} for b in branches):
        return None
    names = [name for branch in branches for name in branch["required"]]
    quoted = " or ".join(f"'{n}'" for n in names)
    where = _label(_pointer(error.absolute_path))
    if error.validator == "oneOf":
        return f"{where} must have exactly one of {quoted}"
    return f"{where} must have at least one of {quoted}"


def _describe(error: ValidationError, schemas: SchemaSet, root_file: str) -> tuple[str, str]:
    """Word the message and hint for a keyword that a single value failed."""
    keyword = error.validator
    label = _label(_pointer(error.absolute_path))
    value = error.instance
    quoted_value = _quote(value)
    own = _title_and_description(error.schema)
    field_hint = _field_hint(error, schemas, root_file)

    if keyword == "type":
        expected = error.validator_value
        expected_words = " or ".join(TYPE_WORDS.get(t, t) for t in ([expected] if isinstance(expected, str) else expected))
        if value is None:
            allowed = error.schema.get("enum")
            if allowed:
                field_hint += " Allowed values: " + ", ".join(str(v) for v in allowed) + "."
            return f"{label} is empty but must be {expected_words}", field_hint
        message = f"{label} must be {expected_words}, found {_type_word(value)}"
        if quoted_value:
            message += f" {quoted_value}"
        allowed = error.schema.get("enum")
        if allowed:
            # Quoting the value would only turn this error into "not an allowed value".
            return message, "allowed values: " + ", ".join(str(v) for v in allowed)
        if expected == "string" and isinstance(value, (bool, int, float)):
            return message, "put the value in quotes so that it stays text, such as \"" + _quote(value) + "\""
        return message, field_hint
    if keyword == "enum":
        allowed = [str(v) for v in error.validator_value]
        close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6)
        hint = (f"did you mean '{close[0]}'? " if close else "") + "allowed values: " + ", ".join(allowed)
        return f"{label}: {quoted_value} is not an allowed value", hint
    if keyword == "pattern":
        title = error.schema.get("title")
        expected_form = f"a valid {title.lower()}" if title else f"matching the pattern {error.validator_value}"
        return f"{label}: {quoted_value} is not {expected_form}", own or f"it must match {error.validator_value}"
    if keyword == "format":
        format_word = FORMAT_WORDS.get(error.validator_value, error.validator_value)
        return f"{label}: {quoted_value} is not a valid {format_word}", own or field_hint
    if keyword == "minLength":
        return f"{label} must not be empty" if error.validator_value == 1 else \
            f"{label} must be at least {error.validator_value} characters long", field_hint
    if keyword == "maxLength":
        return f"{label} is longer than {error.validator_value} characters", field_hint
    if keyword == "minItems":
        return f"{label} must have at least {error.validator_value} item{'s' * (error.validator_value != 1)}", field_hint
    if keyword == "uniqueItems":
        return f"{label} contains the same item more than once", "remove the repeated items"
    if keyword == "minProperties":
        return f"{label} must have at least {error.validator_value} field{'s' * (error.validator_value != 1)}", field_hint
    if keyword in ("minimum", "exclusiveMinimum"):
        return f"{label}: {quoted_value} is below the minimum of {error.validator_value}", field_hint
    if keyword in ("maximum", "exclusiveMaximum"):
        return f"{label}: {quoted_value} is above the maximum of {error.validator_value}", field_hint
    return f"{label}: {error.message}", field_hint


def _field_hint(error: ValidationError, schemas: SchemaSet, root_file: str) -> str:
    return _title_and_description(_field_schema(error, schemas, root_file))


def _field_schema(error: ValidationError, schemas: SchemaSet, root_file: str,
                  extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return the schema of the field that ``error`` is about, with its own title and description.

    ``error.schema`` is often a shared definition (such as "Text"), reached through ``$ref``.
    Walking the schema path from the card's root schema finds the property or item schema that
    names the field, which is what a card author needs to read.
    """
    current: Any = schemas.documents[root_file]
    base = root_file
    field: dict[str, Any] = current
    path = list(error.absolute_schema_path)[:-1] + list(extra)
    index = 0
    try:
        while index < len(path):
            step = path[index]
            if isinstance(current, dict) and "$ref" in current and step not in current:
                current, base = schemas.lookup(current["$ref"], base)
                continue
            if step == "$ref":
                current, base = schemas.lookup(current["$ref"], base)
                index += 1
                continue
            current = current[step]
            if (index > 0 and path[index - 1] == "properties") or step in ("items", "prefixItems"):
                if isinstance(current, dict):
                    field = schemas.resolve(current, base)[0]
            index += 1
    except (KeyError, IndexError, TypeError, referencing.exceptions.Unresolvable):
        log.debug("could not follow schema path %s", path)
    return field


def _title_and_description(schema: dict[str, Any]) -> str:
    title = schema.get("title", "")
    description = schema.get("description", "")
    if title and description:
        return f"{title}: {description}"
    return title or description


def _pointer(path: Any) -> str:
    return "".join("/" + escape_pointer_token(str(part)) for part in path)


def _label(pointer: str) -> str:
    """Name a node for a message: its pointer without the leading '/', or 'the card' for the root."""
    if not pointer:
        return "the card"
    return "'" + pointer[1:].replace("~1", "/").replace("~0", "~") + "'"


def _quote(value: Any) -> str:
    if isinstance(value, str):
        text = value if len(value) <= MAX_QUOTED_CHARS else value[: MAX_QUOTED_CHARS - 3] + "..."
        return repr(text)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return ""
    return str(value)


def _type_word(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "whole number"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
