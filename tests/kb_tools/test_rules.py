"""Integrity rules that the data-driven cases do not pin down value by value."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb_tools.kb import check_knowledge_base
from kb_tools.load import load_yaml_bytes
from kb_tools.rules import CardFile, _url_problem, check_urls


@pytest.mark.parametrize("url", [
    "https://example.org",
    "http://example.org/a?b=c#d",
    "HTTPS://EXAMPLE.ORG/",
])
def test_url_accepted(url: str):
    assert _url_problem(url) == ""


@pytest.mark.parametrize(("url", "problem"), [
    ("javascript:alert(1)", "URL scheme 'javascript' is not allowed"),
    ("JavaScript:alert(1)", "URL scheme 'javascript' is not allowed"),
    ("data:text/html,<script>alert(1)</script>", "URL scheme 'data' is not allowed"),
    ("file:///etc/passwd", "URL scheme 'file' is not allowed"),
    ("ftp://example.org", "URL scheme 'ftp' is not allowed"),
    ("//example.org/page", "has no scheme"),
    ("example.org", "has no scheme"),
    ("https:///path-only", "has no host"),
    (" https://example.org", "contains whitespace or control characters"),
    ("java\tscript:alert(1)", "contains whitespace or control characters"),
    ("https://example.org/\x00", "contains whitespace or control characters"),
])
def test_url_rejected(url: str, problem: str):
    assert problem in _url_problem(url)


def test_url_rule_checks_any_field_named_url():
    text = "id: x\nintegration:\n  notes:\n    - url: javascript:alert(1)\nhomepage_url: ftp://x.org\nrepository: javascript:x\n"
    loaded = load_yaml_bytes(text.encode(), Path("kb/model_cards/x.yaml"))
    card = CardFile("model", Path("kb/model_cards/x.yaml"), loaded)

    found = check_urls([card])

    assert [(d.pointer, d.line, d.column) for d in found] == [
        ("/integration/notes/0/url", 4, 12),
        ("/homepage_url", 5, 15),
        ("/repository", 6, 13),
    ]
    assert {d.rule for d in found} == {"url-scheme"}


def test_broken_card_does_not_cascade(valid_repo: Path):
    (valid_repo / "kb" / "model_cards" / "cortex-vit.yaml").write_text("id: [unclosed\n")

    result = check_knowledge_base(valid_repo)

    assert [(d.path.as_posix(), d.rule) for d in result.diagnostics] == [
        ("kb/model_cards/cortex-vit.yaml", "yaml-syntax"),
    ]
    assert sorted(result.knowledge_base.models) == ["helix-lm"]


def test_id_typo_is_one_error(valid_repo: Path):
    card = valid_repo / "kb" / "model_cards" / "cortex-vit.yaml"
    card.write_text(card.read_text(encoding="utf-8").replace("id: cortex-vit\n", "id: cortex-vti\n", 1),
                    encoding="utf-8")

    result = check_knowledge_base(valid_repo)

    # The other cards still name the file 'cortex-vit', so their references resolve.
    assert [(d.path.as_posix(), d.rule) for d in result.diagnostics] == [
        ("kb/model_cards/cortex-vit.yaml", "id-mismatch"),
    ]
