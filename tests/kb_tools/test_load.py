"""The strict loader: scalar resolution, positions, and every rejection with its position."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kb_tools import load
from kb_tools.load import MAX_FILE_BYTES, MAX_NESTING_DEPTH, load_card_file, load_yaml_bytes

PATH = Path("kb/model_cards/x.yaml")


def _load(text: str | bytes):
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return load_yaml_bytes(raw, PATH)


def _rules(text: str | bytes) -> list[tuple[str, int, int]]:
    return [(d.rule, d.line, d.column) for d in _load(text).diagnostics]


@pytest.mark.parametrize(("written", "value"), [
    ("true", True),
    ("false", False),
    ("True", True),
    ("null", None),
    ("~", None),
    ("", None),
    ("42", 42),
    ("-7", -7),
    ("0", 0),
    ("0.5", 0.5),
    ("1e-3", 0.001),
    ("2.5E3", 2500.0),
    ("2025-05-20", "2025-05-20"),
    ("2025-05-20T10:00:00Z", "2025-05-20T10:00:00Z"),
    ("1.10", "1.10"),
    ("2.0", "2.0"),
    ("0123", "0123"),
    ("1.2.3", "1.2.3"),
    ("no", "no"),
    ("yes", "yes"),
    ("on", "on"),
    ("off", "off"),
    ("y", "y"),
    ("0x1F", "0x1F"),
    (".inf", ".inf"),
    ("1_000", "1_000"),
    ("7B", "7B"),
    ("'true'", "true"),
    ('"42"', "42"),
    ("'null'", "null"),
    ("''", ""),
    ("|\n  text\n", "text\n"),
])
def test_scalar_resolution(written: str, value):
    result = _load(f"key: {written}\n")

    assert result.diagnostics == []
    assert result.data == {"key": value}
    assert type(result.data["key"]) is type(value)


def test_keys_stay_text():
    result = _load("1: one\ntrue: yes\nnull: x\n")

    assert result.data == {"1": "one", "true": "yes", "null": "x"}


def test_positions_of_keys_and_values():
    text = "id: demo\nlist:\n  - a\n  - {b: 1, c: 'é'}\nnested:\n  deep:\n    key: value\n"
    result = _load(text)

    assert result.positions == {
        "": (1, 1),
        "/id": (1, 5),
        "/list": (3, 3),
        "/list/0": (3, 5),
        "/list/1": (4, 5),
        "/list/1/b": (4, 9),
        "/list/1/c": (4, 15),
        "/nested": (6, 3),
        "/nested/deep": (7, 5),
        "/nested/deep/key": (7, 10),
    }
    assert result.key_positions == {
        "/id": (1, 1),
        "/list": (2, 1),
        "/list/1/b": (4, 6),
        "/list/1/c": (4, 12),
        "/nested": (5, 1),
        "/nested/deep": (6, 3),
        "/nested/deep/key": (7, 5),
    }


def test_positions_count_characters_not_bytes():
    result = _load("a: [éé, x]\n")

    assert result.positions["/a/1"] == (1, 9)


def test_pointer_escapes_slash_and_tilde():
    result = _load("a/b: 1\nc~d: 2\n")

    assert result.positions["/a~1b"] == (1, 6)
    assert result.positions["/c~0d"] == (2, 6)


def test_position_of_falls_back_to_parent():
    result = _load("a:\n  b: 1\n")

    assert result.position_of("/a/b/missing") == (2, 6)
    assert result.position_of("/a/b", key=True) == (2, 3)


def test_byte_order_mark_is_accepted():
    assert _load(b"\xef\xbb\xbfid: x\n").data == {"id": "x"}


@pytest.mark.parametrize(("text", "expected"), [
    ("a: [1\n", [("yaml-syntax", 2, 1)]),
    ("a: 'open\n", [("yaml-syntax", 2, 1)]),
    ("a: 1\n b: 2\n", [("yaml-syntax", 2, 3)]),
    ("a: \x07\n", [("yaml-syntax", 1, 4)]),
    ("a: 1\na: 2\n", [("duplicate-key", 2, 1)]),
    ("a: {b: 1, b: 2}\n", [("duplicate-key", 1, 11)]),
    ("a: !!str 1\n", [("yaml-tag", 1, 4)]),
    ("a: !!python/object/apply:os.system [ls]\n", [("yaml-tag", 1, 4)]),
    ("a: !local x\n", [("yaml-tag", 1, 4)]),
    ("a: !!map {b: 1}\n", [("yaml-tag", 1, 4)]),
    ("a: &x 1\nb: *x\n", [("yaml-anchor", 1, 4), ("yaml-anchor", 2, 4)]),
    ("a: &x [1]\n", [("yaml-anchor", 1, 4)]),
    ("a: &x k\n*x : 1\n", [("yaml-anchor", 1, 4), ("yaml-anchor", 2, 1)]),
    ("- *undefined\n", [("yaml-anchor", 1, 3)]),
    ("a: 1\n---\nb: 2\n", [("multiple-documents", 2, 1)]),
    ("a: 1\n---\n", [("multiple-documents", 2, 1)]),
    ("", [("empty-file", 0, 0)]),
    ("   \n\n", [("empty-file", 0, 0)]),
    ("# only a comment\n", [("empty-file", 0, 0)]),
    ("---\n", [("empty-file", 0, 0)]),
    ("null\n", [("empty-file", 0, 0)]),
    ("- a\n- b\n", [("root-not-mapping", 1, 1)]),
    ("just text\n", [("root-not-mapping", 1, 1)]),
    ("a:\n\tb: 1\n", [("tab-indentation", 2, 1)]),
    ("a:\n  \tb: 1\nc:\n\t- d\n", [("tab-indentation", 2, 3), ("tab-indentation", 4, 1)]),
    ("? [a, b]\n: 1\n", [("yaml-syntax", 1, 3)]),
])
def test_rejections(text: str, expected: list[tuple[str, int, int]]):
    result = _load(text)

    assert [(d.rule, d.line, d.column) for d in result.diagnostics] == expected
    assert result.data is None
    assert not result.ok
    assert all(d.hint for d in result.diagnostics)


def test_nesting_at_limit_loads():
    # The root mapping is level 1, so the flow list adds MAX_NESTING_DEPTH - 1 more levels.
    depth = MAX_NESTING_DEPTH - 1
    result = _load("a: " + "[" * depth + "]" * depth + "\n")

    assert result.diagnostics == []


@pytest.mark.parametrize("text", [
    "a: " + "[" * 999 + "]" * 999 + "\n",
    "a: " + "{b: " * 900 + "1" + "}" * 900 + "\n",
    "".join("  " * level + f"k{level}:\n" for level in range(100)) + "  " * 100 + "x\n",
])
def test_deep_nesting_reported_once(text: str):
    result = _load(text)

    assert [d.rule for d in result.diagnostics] == ["nesting-too-deep"]
    assert result.data is None


def test_deep_nesting_position_and_later_keys():
    depth = MAX_NESTING_DEPTH
    text = "a: " + "[" * depth + "]" * depth + "\nb: 1\nb: 2\n"

    result = _load(text)

    assert [(d.rule, d.line, d.column) for d in result.diagnostics] == [
        ("nesting-too-deep", 1, 3 + depth),
        ("duplicate-key", 3, 1),
    ]


def test_unclosed_bracket_names_its_start():
    [diagnostic] = _load("id: x\nname: [unclosed\nsummary: text\n").diagnostics

    # libyaml stops at the ':' of the next line, inside the still open list.
    assert (diagnostic.rule, diagnostic.line, diagnostic.column) == ("yaml-syntax", 3, 8)
    assert diagnostic.message.endswith("(started at line 2, column 7)")


def test_duplicate_key_names_both_lines():
    [diagnostic] = _load("id: a\nname: x\nname: y\n").diagnostics

    assert diagnostic.message == "duplicate key 'name': first defined on line 2, again on line 3"
    assert diagnostic.pointer == "/name"


def test_tag_message_shows_tag_as_written():
    [diagnostic] = _load("a: !!python/name:os.system ''\n").diagnostics

    assert "'!!python/name:os.system'" in diagnostic.message


def test_not_utf8_names_line_and_byte():
    [diagnostic] = _load(b"id: x\nname: caf\xe9 au lait\n").diagnostics

    assert (diagnostic.rule, diagnostic.line, diagnostic.column) == ("not-utf8", 2, 10)
    assert diagnostic.message == "byte 0xe9 at byte offset 15 is not valid UTF-8"


def test_file_too_large(tmp_path: Path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: " + b"x" * MAX_FILE_BYTES + b"\n")

    [diagnostic] = load_card_file(path, Path("kb/model_cards/big.yaml")).diagnostics

    assert diagnostic.rule == "file-too-large"
    assert diagnostic.path == Path("kb/model_cards/big.yaml")
    assert "1 MiB" in diagnostic.message
    assert f"{MAX_FILE_BYTES:,} bytes" in diagnostic.message


def test_file_at_size_limit_loads(tmp_path: Path):
    path = tmp_path / "edge.yaml"
    path.write_bytes(b"a: " + b"x" * (MAX_FILE_BYTES - 4) + b"\n")

    assert load_card_file(path).data == {"a": "x" * (MAX_FILE_BYTES - 4)}


def test_missing_file_is_a_diagnostic(tmp_path: Path):
    [diagnostic] = load_card_file(tmp_path / "absent.yaml").diagnostics

    assert diagnostic.rule == "not-readable"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_named_pipe_is_not_read(tmp_path: Path):
    # Reading a named pipe would block until a writer opens it, so validation would hang.
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)

    [diagnostic] = load_card_file(path).diagnostics

    assert (diagnostic.rule, diagnostic.line, diagnostic.column) == ("not-a-file", 0, 0)


def test_pure_python_parser_gives_same_result(monkeypatch):
    text = "id: demo\nv: 1.10\nlist: [a, {b: 2}]\nn: 0.5\n"
    fast = _load(text)
    monkeypatch.setattr(load, "_LOADER", load.yaml.SafeLoader)
    slow = _load(text)

    assert slow.data == fast.data
    assert slow.positions == fast.positions
    assert slow.key_positions == fast.key_positions


def test_pure_python_parser_reports_control_character(monkeypatch):
    monkeypatch.setattr(load, "_LOADER", load.yaml.SafeLoader)

    assert _rules("a: é\x07\n") == [("yaml-syntax", 1, 5)]


def test_c_parser_reports_control_character_by_character_column():
    assert _rules("a: é\x07\n") == [("yaml-syntax", 1, 5)]
