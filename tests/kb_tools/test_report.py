"""Text, JSON and GitHub output of diagnostics, compared exactly."""

from __future__ import annotations

import io
import json
from pathlib import Path

from kb_tools.diagnostics import Diagnostic, Severity
from kb_tools.report import format_github, format_json, format_text, summary_line, use_colour

ERROR = Diagnostic(Path("kb/model_cards/a.yaml"), 3, 11, "schema.enum", "'modality': 'genomics' is not an allowed value",
                   Severity.ERROR, "/modality", "did you mean 'genetics'?")
WARNING = Diagnostic(Path("kb/paper_cards/b.yaml"), 8, 5, "one-sided-link", "paper 'b' lists model 'a'",
                     Severity.WARNING, "/models/0", "")
WHOLE_FILE = Diagnostic(Path("kb/drafts/c.yaml"), 0, 0, "misplaced-card", "YAML file outside the card folders",
                        Severity.ERROR, "", "move it")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_text_format():
    assert format_text([ERROR, WARNING, WHOLE_FILE], 5) == (
        "kb/model_cards/a.yaml:3:11: error[schema.enum]: 'modality': 'genomics' is not an allowed value\n"
        "    hint: did you mean 'genetics'?\n"
        "kb/paper_cards/b.yaml:8:5: warning[one-sided-link]: paper 'b' lists model 'a'\n"
        "kb/drafts/c.yaml: error[misplaced-card]: YAML file outside the card folders\n"
        "    hint: move it\n"
        "2 errors, 1 warning in 5 files\n"
    )


def test_summary_line_plurals():
    assert summary_line([], 1) == "0 errors, 0 warnings in 1 file"
    assert summary_line([ERROR], 2) == "1 error, 0 warnings in 2 files"


def test_text_colour_only_when_asked():
    coloured = format_text([ERROR], 1, colour=True)

    assert "\033[31m" in coloured
    assert "\033" not in format_text([ERROR], 1, colour=False)


def test_use_colour_rules():
    assert use_colour(_Terminal(), {}) is True
    assert use_colour(_Terminal(), {"NO_COLOR": "1"}) is False
    assert use_colour(io.StringIO(), {}) is False


def test_json_format():
    assert json.loads(format_json([ERROR, WHOLE_FILE])) == [
        {"path": "kb/model_cards/a.yaml", "line": 3, "column": 11, "severity": "error", "rule": "schema.enum",
         "message": "'modality': 'genomics' is not an allowed value", "pointer": "/modality",
         "hint": "did you mean 'genetics'?"},
        {"path": "kb/drafts/c.yaml", "line": 0, "column": 0, "severity": "error", "rule": "misplaced-card",
         "message": "YAML file outside the card folders", "pointer": "", "hint": "move it"},
    ]
    assert list(json.loads(format_json([ERROR]))[0]) == \
        ["path", "line", "column", "severity", "rule", "message", "pointer", "hint"]


def test_json_format_empty():
    assert format_json([]) == "[]\n"


def test_github_format():
    assert format_github([ERROR, WARNING, WHOLE_FILE]) == (
        "::error file=kb/model_cards/a.yaml,line=3,col=11,title=schema.enum::"
        "'modality': 'genomics' is not an allowed value%0Ahint: did you mean 'genetics'?\n"
        "::warning file=kb/paper_cards/b.yaml,line=8,col=5,title=one-sided-link::paper 'b' lists model 'a'\n"
        "::error file=kb/drafts/c.yaml,title=misplaced-card::YAML file outside the card folders%0Ahint: move it\n"
    )


def test_github_escaping():
    diagnostic = Diagnostic(Path("kb/a,b:c%.yaml"), 1, 1, "rule:x,y", "100% done\r\nnext: a, b", Severity.ERROR)

    assert format_github([diagnostic]) == (
        "::error file=kb/a%2Cb%3Ac%25.yaml,line=1,col=1,title=rule%3Ax%2Cy::100%25 done%0D%0Anext: a, b\n"
    )
