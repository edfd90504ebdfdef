"""Strict YAML loading: plain JSON-like data plus the line and column of every key and value.

Cards are data, so the loader accepts only the part of YAML that data needs. It rejects tags,
anchors and aliases, duplicate keys, several documents, tab indentation, bytes that are not
UTF-8, files over ``MAX_FILE_BYTES`` and lists or mappings nested deeper than
``MAX_NESTING_DEPTH``. Every rejection is a ``Diagnostic``; the loader does
not raise for anything a card file contains.

The loader reads PyYAML's event stream (from libyaml's C parser when PyYAML was built with
it) and builds the values itself. The composed node graph cannot be used instead because it
resolves aliases and drops anchors and explicit tags.

Plain scalars resolve like this, and every other scalar stays the text that was written:

- ``true``/``false`` (also ``True``, ``TRUE`` and so on) become bool;
- ``null``, ``~`` or nothing become None;
- decimal integers become int, and decimals with a dot or an exponent become float,
  unless the conversion would drop a written digit (see ``_resolve_plain``);
- dates (2025-05-20), versions (1.10) and words such as yes/no/on/off stay strings.
"""

from __future__ import annotations

import logging
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kb_tools.diagnostics import Diagnostic, Severity

log = logging.getLogger(__name__)

# Cards are a few kilobytes. A file this large is a mistake, such as a data dump or a binary,
# and parsing it would slow down every validation run.
MAX_FILE_BYTES = 1024 * 1024

# The deepest card field is four lists or mappings down (the root, architecture, components and
# one component). jsonschema and the integrity rules recurse at every level, and a file nested a
# few hundred levels deep would exceed Python's recursion limit, so deeper data is rejected.
MAX_NESTING_DEPTH = 32

# libyaml's parser when PyYAML was built against libyaml, else the pure-Python one.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_YAML_TAG_PREFIX = "tag:yaml.org,2002:"

_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+")
# A zero at the end of the fraction ("1.10", "2.0") or at the start of an integer ("0123").
_TRAILING_FRACTION_ZERO = re.compile(r"\.[0-9]*0(?:[eE]|$)")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9]")

Position = tuple[int, int]


@dataclass
class LoadResult:
    """Result of loading one file.

    ``data`` is the root mapping, or None when the file has any load error. ``positions`` maps
    the JSON pointer of every value to its 1-based (line, column). ``key_positions`` does the
    same for the key of every mapping entry, so that a message about an unknown key can point
    at the key rather than at its value.
    """

    path: Path
    data: dict[str, Any] | None = None
    positions: dict[str, Position] = field(default_factory=dict)
    key_positions: dict[str, Position] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.data is not None and not any(d.is_error for d in self.diagnostics)

    def position_of(self, pointer: str, *, key: bool = False) -> Position:
        """Return the position of ``pointer``, or of its nearest ancestor that has one."""
        table = self.key_positions if key else self.positions
        probe = pointer
        while True:
            if probe in table:
                return table[probe]
            if probe in self.positions:
                return self.positions[probe]
            if not probe:
                return (1, 1)
            probe = probe.rsplit("/", 1)[0]


def escape_pointer_token(token: str) -> str:
    """Escape one reference token of a JSON pointer (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def load_card_file(path: Path, display_path: Path | None = None, *, max_bytes: int = MAX_FILE_BYTES) -> LoadResult:
    """Read and parse one card file. Diagnostics name ``display_path`` if given, else ``path``."""
    reported_path = display_path if display_path is not None else path
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode) and not stat.S_ISDIR(status.st_mode):
            # Reading a named pipe or a device would block or never end. A folder fails to read below.
            return _failed(reported_path, 0, 0, "not-a-file", "not a regular file, so it is not read",
                           "card files must be regular files; remove it or replace it with the card's text")
        size = status.st_size
        if size > max_bytes:
            return _failed(reported_path, 0, 0, "file-too-large",
                           f"file is {size:,} bytes, over the limit of {max_bytes:,} bytes ({_mib(max_bytes)})",
                           "cards are small text files; split the content or remove the data that does not belong in a card")
        raw = path.read_bytes()
    except OSError as error:
        return _failed(reported_path, 0, 0, "not-readable", f"cannot read file: {error.strerror or error}",
                       "check that the file exists and that you have permission to read it")
    return load_yaml_bytes(raw, reported_path, max_bytes=max_bytes)


def load_yaml_bytes(raw: bytes, path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> LoadResult:
    """Parse the bytes of one card file. ``path`` is only used to name the file in diagnostics."""
    if len(raw) > max_bytes:
        return _failed(path, 0, 0, "file-too-large",
                       f"file is {len(raw):,} bytes, over the limit of {max_bytes:,} bytes ({_mib(max_bytes)})",
                       "cards are small text files; split the content or remove the data that does not belong in a card")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return _failed(path, *_byte_position(raw, error.start), "not-utf8",
                       f"byte 0x{raw[error.start]:02x} at byte offset {error.start} is not valid UTF-8",
                       "save the file as UTF-8")
    if text.startswith("\ufeff"):
        text = text[1:]

    tab_diagnostics = _find_tab_indentation(text, path)
    if tab_diagnostics:
        return LoadResult(path, diagnostics=tab_diagnostics)

    return _EventBuilder(text, path).build()


def _failed(path: Path, line: int, column: int, rule: str, message: str, hint: str = "") -> LoadResult:
    return LoadResult(path, diagnostics=[Diagnostic(path, line, column, rule, message, Severity.ERROR, "", hint)])


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):g} MiB"


def _byte_position(raw: bytes, offset: int) -> Position:
    """Return the 1-based line and byte column of ``offset`` in ``raw``."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _find_tab_indentation(text: str, path: Path) -> list[Diagnostic]:
    """Report every line whose leading whitespace contains a tab."""
    if "\t" not in text:
        return []
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            found.append(Diagnostic(path, number, indent.index("\t") + 1, "tab-indentation",
                                    "tab character in indentation, but YAML indents with spaces only",
                                    Severity.ERROR, "", "replace the tab with spaces"))
    return found


def _resolve_plain(text: str) -> Any:
    """Convert a plain (unquoted, untagged) scalar to bool, None, int or float, or keep the text.

    A number keeps its text when conversion would drop a written digit. "1.10" and "2.0" are
    usually version numbers, and "0123" is an identifier such as a PubMed id, so all three
    stay strings. "0.5", "1e-3" and "42" become numbers.
    """
    if text in _NULL:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    first = text[0]
    if not (first.isdigit() or first in "+-."):
        return text
    if _INT.fullmatch(text):
        return text if _LEADING_ZERO.match(text) else int(text)
    if _FLOAT.fullmatch(text) and not _TRAILING_FRACTION_ZERO.search(text):
        return float(text)
    return text


def _display_tag(tag: str) -> str:
    if tag.startswith(_YAML_TAG_PREFIX):
        return "!!" + tag[len(_YAML_TAG_PREFIX):]
    return tag


class _Container:
    """A mapping or sequence under construction, with the state the next event needs."""

    __slots__ = ("value", "pointer", "is_mapping", "pending_key", "key_lines")

    def __init__(self, value: dict | list, pointer: str) -> None:
        self.value = value
        self.pointer = pointer
        self.is_mapping = isinstance(value, dict)
        self.pending_key: str | None = None
        self.key_lines: dict[str, int] = {}


class _EventBuilder:
    """Build plain values from PyYAML events, recording positions and rejecting what cards forbid."""

    def __init__(self, text: str, path: Path) -> None:
        self.text = text
        self.path = path
        self.positions: dict[str, Position] = {}
        self.key_positions: dict[str, Position] = {}
        self.diagnostics: list[Diagnostic] = []
        self.stack: list[_Container] = []
        self.root: Any = None
        self.documents = 0
        # Nesting level inside a subtree that is being skipped: a complex (non-scalar) key, or a
        # list or mapping deeper than MAX_NESTING_DEPTH.
        self.skip_depth = 0

    def build(self) -> LoadResult:
        try:
            # PyYAML's pure-Python reader checks every character when the loader is created.
            loader = _LOADER(self.text)
            try:
                self._consume(loader)
            finally:
                loader.dispose()
        except yaml.YAMLError as error:
            self.diagnostics.append(self._syntax_diagnostic(error))
        result = LoadResult(self.path, None, self.positions, self.key_positions, self.diagnostics)
        if self.diagnostics:
            return result
        if self.documents == 0 or (self.root is None and not self.stack):
            self.diagnostics.append(Diagnostic(self.path, 0, 0, "empty-file", "file contains no card data",
                                               Severity.ERROR, "", "write the card as a YAML mapping of field names to values"))
        elif not isinstance(self.root, dict):
            line, column = self.positions.get("", (1, 1))
            kind = "list" if isinstance(self.root, list) else "single value"
            self.diagnostics.append(Diagnostic(self.path, line, column, "root-not-mapping",
                                               f"card must be a mapping of field names to values, found a {kind}",
                                               Severity.ERROR, "", "start the file with 'id: <card id>' and one field per line"))
        else:
            result.data = self.root
        return result

    def _consume(self, loader: Any) -> None:
        while True:
            event = loader.get_event()
            kind = type(event)
            if kind is yaml.ScalarEvent:
                self._on_scalar(event)
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                self._on_collection_start(event, {} if kind is yaml.MappingStartEvent else [])
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                self._on_collection_end()
            elif kind is yaml.AliasEvent:
                self._on_alias(event)
            elif kind is yaml.DocumentStartEvent:
                self.documents += 1
                if self.documents == 2:
                    self._reject(event, "multiple-documents", "file contains more than one YAML document",
                                 "keep one card per file and remove the '---' separator")
            elif kind is yaml.StreamEndEvent:
                return

    def _on_scalar(self, event: Any) -> None:
        self._check_node_properties(event)
        if self.skip_depth:
            return
        parent = self.stack[-1] if self.stack else None
        if parent is not None and parent.is_mapping and parent.pending_key is None:
            self._on_key(parent, event.value, event)
        elif event.tag is None and event.implicit[0]:
            self._add_value(_resolve_plain(event.value), event)
        else:
            self._add_value(event.value, event)

    def _on_alias(self, event: Any) -> None:
        self._reject(event, "yaml-anchor", f"alias '*{event.anchor}' is not allowed because cards are plain data",
                     "write the value out in full instead of referring to an anchor")
        if self.skip_depth:
            return
        parent = self.stack[-1] if self.stack else None
        if parent is not None and parent.is_mapping and parent.pending_key is None:
            self._on_key(parent, f"*{event.anchor}", event)
        else:
            self._add_value(None, event)

    def _on_key(self, parent: _Container, key: str, event: Any) -> None:
        line, column = event.start_mark.line + 1, event.start_mark.column + 1
        pointer = parent.pointer + "/" + escape_pointer_token(key)
        first_line = parent.key_lines.get(key)
        if first_line is not None:
            self.diagnostics.append(Diagnostic(
                self.path, line, column, "duplicate-key",
                f"duplicate key '{key}': first defined on line {first_line}, again on line {line}",
                Severity.ERROR, pointer, "remove one of the two entries or merge them"))
        else:
            parent.key_lines[key] = line
            self.key_positions[pointer] = (line, column)
        parent.pending_key = key

    def _on_collection_start(self, event: Any, value: dict | list) -> None:
        self._check_node_properties(event)
        if self.skip_depth:
            self.skip_depth += 1
            return
        parent = self.stack[-1] if self.stack else None
        if parent is not None and parent.is_mapping and parent.pending_key is None:
            self._reject(event, "yaml-syntax", "a mapping key must be a plain value, not a list or mapping",
                         "write the key as text")
            self.skip_depth = 1
            parent.pending_key = ""
            return
        if len(self.stack) >= MAX_NESTING_DEPTH:
            self._reject(event, "nesting-too-deep",
                         f"lists and mappings are nested more than {MAX_NESTING_DEPTH} levels deep here",
                         "cards need only a few levels; flatten this value or remove it")
            self.skip_depth = 1
            if parent.is_mapping:
                parent.pending_key = None
            return
        pointer = self._add_value(value, event)
        self.stack.append(_Container(value, pointer))

    def _on_collection_end(self) -> None:
        if self.skip_depth:
            self.skip_depth -= 1
            return
        self.stack.pop()

    def _add_value(self, value: Any, event: Any) -> str:
        """Store ``value`` in the open container (or as the root) and return its JSON pointer."""
        position = (event.start_mark.line + 1, event.start_mark.column + 1)
        if not self.stack:
            if self.documents == 1:
                self.root = value
                self.positions[""] = position
            return ""
        parent = self.stack[-1]
        if parent.is_mapping:
            key = parent.pending_key
            parent.pending_key = None
            pointer = parent.pointer + "/" + escape_pointer_token(key)
            if key in parent.value:
                # A duplicate key, already reported. The first value stays.
                return pointer + "/~duplicate"
            parent.value[key] = value
        else:
            pointer = f"{parent.pointer}/{len(parent.value)}"
            parent.value.append(value)
        self.positions[pointer] = position
        return pointer

    def _check_node_properties(self, event: Any) -> None:
        if event.anchor is not None:
            self._reject(event, "yaml-anchor", f"anchor '&{event.anchor}' is not allowed because cards are plain data",
                         "remove the anchor and write each value out in full")
        if event.tag is not None:
            self._reject(event, "yaml-tag", f"tag '{_display_tag(event.tag)}' is not allowed because cards are plain data",
                         "remove the tag, and put the value in quotes if it must stay text")

    def _reject(self, event: Any, rule: str, message: str, hint: str) -> None:
        mark = event.start_mark
        self.diagnostics.append(Diagnostic(self.path, mark.line + 1, mark.column + 1, rule, message,
                                           Severity.ERROR, "", hint))

    def _syntax_diagnostic(self, error: yaml.YAMLError) -> Diagnostic:
        mark = getattr(error, "problem_mark", None)
        if mark is not None:
            line, column = mark.line + 1, mark.column + 1
            parts = [getattr(error, "context", None), getattr(error, "problem", None)]
            message = "; ".join(p for p in parts if p) or str(error)
            # An unclosed bracket or quote is found only at the end of the file, far from its start.
            start = getattr(error, "context_mark", None)
            if start is not None and (start.line, start.column) != (mark.line, mark.column):
                message += f" (started at line {start.line + 1}, column {start.column + 1})"
        elif isinstance(error, yaml.reader.ReaderError):
            line, column = self._reader_position(error.position)
            code = error.character if isinstance(error.character, int) else ord(error.character)
            message = f"character U+{code:04X} is not allowed in YAML ({error.reason})"
        else:
            line, column, message = 0, 0, str(error)
        log.debug("YAML error in %s: %s", self.path, error)
        return Diagnostic(self.path, line, column, "yaml-syntax", f"invalid YAML: {message}", Severity.ERROR, "",
                          "check the indentation and quoting around this position")

    def _reader_position(self, offset: int) -> Position:
        """Return the line and character column of a reader error offset.

        libyaml counts the offset in bytes of the UTF-8 text, and PyYAML's own reader in characters.
        """
        text = self.text
        if _LOADER is not yaml.SafeLoader:
            text = self.text.encode("utf-8")[:offset].decode("utf-8", errors="replace")
            offset = len(text)
        line_start = text.rfind("\n", 0, offset) + 1
        return text.count("\n", 0, offset) + 1, offset - line_start + 1
