"""A fast yes/no validity check for cards, compiled from the card schemas.

jsonschema interprets the schema for every card, which costs about three times as much as
parsing the card. fastjsonschema turns a schema into Python code once. The quick check built
here only decides whether a card is valid: a card that fails it goes through jsonschema, which
words every error, so every diagnostic still comes from jsonschema.

A card that the quick check accepts must be one that jsonschema accepts. fastjsonschema
implements Draft 7, not 2020-12, so the schema is converted first:

- every ``$ref`` is inlined, and annotations (title, description) are dropped;
- ``unevaluatedProperties`` becomes ``additionalProperties``. The two are equal only when no
  in-place applicator of the same schema object (allOf, anyOf, oneOf, if/then/else)
  declares properties, and the conversion checks that;
- ``format`` is checked by jsonschema's own format checker functions;
- a keyword that Draft 7 lacks (such as ``prefixItems``) stops the conversion, and jsonschema
  on the inlined schema becomes the quick check instead.

- fastjsonschema makes ``$`` in a pattern match only at the very end of the text, while
  Python's ``re`` (which jsonschema uses) also matches before a final newline. A ``$`` that
  ends a pattern is rewritten to ``(?=\\n?\\Z)``, the same condition, and a ``$`` anywhere else
  stops the conversion.

fastjsonschema is still stricter in one way, which only sends more cards to the full
validator: 1.0 is not an integer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator

log = logging.getLogger(__name__)

# Resolves a $ref written in a schema file to the target schema and the file it is in.
Lookup = Callable[[str, str], tuple[dict[str, Any], str]]

# Keywords that do not affect validation, which the inlined schema leaves out.
_ANNOTATIONS = frozenset({"title", "description", "$comment", "examples", "default", "$defs", "$schema", "$id",
                          "deprecated", "readOnly", "writeOnly"})
# Keywords whose value is a mapping of names to subschemas, a list of subschemas, or one subschema.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_VALUES = frozenset({"items", "contains", "not", "if", "then", "else", "additionalProperties",
                            "unevaluatedProperties", "unevaluatedItems", "propertyNames"})
# Keywords of 2020-12 that Draft 7 does not have, or reads differently.
_NOT_IN_DRAFT7 = frozenset({"prefixItems", "unevaluatedItems", "dependentRequired", "dependentSchemas",
                            "$dynamicRef", "$dynamicAnchor", "$anchor", "$recursiveRef", "minContains",
                            "maxContains", "$ref"})
_IN_PLACE_APPLICATORS = ("allOf", "anyOf", "oneOf", "if", "then", "else")
# Equivalent of "$" in Python's re without MULTILINE: the end, or just before a final newline.
_PYTHON_END = r"(?=\n?\Z)"
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_PROPERTY_KEYWORDS = ("properties", "patternProperties", "additionalProperties", "unevaluatedProperties")


class _NotConvertible(Exception):
    """The schema uses something that the Draft 7 conversion cannot express exactly."""


def compile_quick_check(lookup: Lookup, schema: dict[str, Any], base: str) -> Callable[[Any], bool]:
    """Compile ``schema`` (from the file ``base``) into a function that returns whether a card is valid."""
    inlined = inline_refs(lookup, schema, base, ())
    try:
        import fastjsonschema

        draft7 = _to_draft7(inlined)
        draft7["$schema"] = "http://json-schema.org/draft-07/schema#"
        formats = {name: _format_function(name) for name in Draft202012Validator.FORMAT_CHECKER.checkers}
        compiled = fastjsonschema.compile(draft7, formats=formats)
    except ImportError:
        log.debug("fastjsonschema is not installed; the quick check uses jsonschema")
    except (_NotConvertible, ValueError) as error:
        # fastjsonschema's JsonSchemaDefinitionException is a ValueError.
        log.debug("quick check for %s falls back to jsonschema: %s", base, error)
    else:
        def quick_check(instance: Any) -> bool:
            try:
                compiled(instance)
            except fastjsonschema.JsonSchemaException:
                return False
            return True

        return quick_check

    return Draft202012Validator(inlined, format_checker=Draft202012Validator.FORMAT_CHECKER).is_valid


def _format_function(name: str) -> Callable[[Any], bool]:
    checker = Draft202012Validator.FORMAT_CHECKER
    return lambda value: checker.conforms(value, name)


def inline_refs(lookup: Lookup, schema: Any, base: str, seen: tuple[str, ...]) -> Any:
    """Return a copy of ``schema`` with each ``$ref`` replaced by its target and annotations removed.

    A ``$ref`` and its sibling keywords both apply in 2020-12, so they are combined with
    ``allOf`` when both constrain the value. A recursive reference is left as it is.
    """
    if not isinstance(schema, dict):
        return schema  # A boolean schema.
    own: dict[str, Any] = {}
    for keyword, value in schema.items():
        if keyword in _ANNOTATIONS or keyword == "$ref":
            continue
        if keyword in _SCHEMA_MAPS and isinstance(value, dict):
            own[keyword] = {name: inline_refs(lookup, sub, base, seen) for name, sub in value.items()}
        elif keyword in _SCHEMA_LISTS and isinstance(value, list):
            own[keyword] = [inline_refs(lookup, sub, base, seen) for sub in value]
        elif keyword in _SCHEMA_VALUES:
            own[keyword] = inline_refs(lookup, value, base, seen)
        else:
            own[keyword] = value

    ref = schema.get("$ref")
    if not isinstance(ref, str):
        return own
    target_file = ref.split("#", 1)[0] or base
    key = f"{target_file}#{ref.partition('#')[2]}"
    if key in seen:
        return {**own, "$ref": ref}
    target, target_base = lookup(ref, base)
    inlined = inline_refs(lookup, target, target_base, (*seen, key))
    if not own:
        return inlined
    return {"allOf": [inlined, own]}


def _to_draft7(schema: Any) -> Any:
    """Convert an inlined 2020-12 schema to Draft 7, or raise _NotConvertible."""
    if not isinstance(schema, dict):
        return schema
    unsupported = _NOT_IN_DRAFT7.intersection(schema)
    if unsupported:
        raise _NotConvertible(f"keywords {sorted(unsupported)} have no Draft 7 equivalent")
    if "unevaluatedProperties" in schema:
        if "additionalProperties" in schema:
            raise _NotConvertible("both additionalProperties and unevaluatedProperties")
        for keyword in _IN_PLACE_APPLICATORS:
            branches = schema.get(keyword)
            branches = branches if isinstance(branches, list) else [branches]
            if any(isinstance(b, dict) and _declares_properties(b) for b in branches):
                raise _NotConvertible(f"unevaluatedProperties next to {keyword} that declares properties")

    converted: dict[str, Any] = {}
    for keyword, value in schema.items():
        target = "additionalProperties" if keyword == "unevaluatedProperties" else keyword
        if keyword in _SCHEMA_MAPS:
            converted[target] = {name: _to_draft7(sub) for name, sub in value.items()}
        elif keyword in _SCHEMA_LISTS:
            converted[target] = [_to_draft7(sub) for sub in value]
        elif keyword in _SCHEMA_VALUES:
            converted[target] = _to_draft7(value)
        elif keyword == "pattern" and isinstance(value, str):
            converted[target] = _pattern_for_draft7(value)
        else:
            converted[target] = value
    return converted


def _pattern_for_draft7(pattern: str) -> str:
    """Rewrite a final ``$`` so that fastjsonschema matches it the way Python's ``re`` does."""
    dollars = [m.start() for m in _UNESCAPED_DOLLAR.finditer(pattern)]
    if not dollars:
        return pattern
    if dollars != [len(pattern) - 1]:
        raise _NotConvertible(f"pattern {pattern!r} has '$' before its end")
    return pattern[:-1] + _PYTHON_END


def _declares_properties(schema: dict[str, Any]) -> bool:
    """Return whether ``schema`` or an in-place applicator inside it evaluates object properties."""
    if any(keyword in schema for keyword in _PROPERTY_KEYWORDS):
        return True
    for keyword in _IN_PLACE_APPLICATORS:
        branches = schema.get(keyword)
        branches = branches if isinstance(branches, list) else [branches]
        if any(isinstance(b, dict) and _declares_properties(b) for b in branches):
            return True
    return False
