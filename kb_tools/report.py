"""Print diagnostics as text for people, JSON for programs, or GitHub Actions annotations.

Text lines read ``path:line:col: severity[rule]: message`` with an indented ``hint:`` line
below, the form compilers and linters use, so editors can jump to the position. A diagnostic
about a whole file (line 0) prints as ``path: severity[rule]: message``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TextIO

from kb_tools.diagnostics import Diagnostic, Severity

FORMATS = ("text", "json", "github")

# ANSI SGR codes for the text format.
_RESET = "\033[0m"
_BOLD = "\033[1m"
_DIM = "\033[2m"
_COLOURS = {Severity.ERROR: "\033[31m", Severity.WARNING: "\033[33m"}


def use_colour(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Return whether to colour output: only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    environ = os.environ if environ is None else environ
    if environ.get("NO_COLOR", ""):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _location(diagnostic: Diagnostic) -> str:
    path = diagnostic.path.as_posix()
    if diagnostic.line <= 0:
        return path
    return f"{path}:{diagnostic.line}:{diagnostic.column}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def summary_line(diagnostics: Sequence[Diagnostic], files_checked: int) -> str:
    """Return "N errors, M warnings in K files", counting the files that were checked."""
    errors = sum(d.is_error for d in diagnostics)
    warnings = len(diagnostics) - errors
    return f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')} in {_plural(files_checked, 'file')}"


def format_text(diagnostics: Sequence[Diagnostic], files_checked: int, *, colour: bool = False,
                summary: bool = True) -> str:
    """Format diagnostics one per line, each followed by its hint, then a summary line."""
    lines = []
    for diagnostic in diagnostics:
        severity = diagnostic.severity.value
        location = _location(diagnostic)
        if colour:
            severity = f"{_BOLD}{_COLOURS[diagnostic.severity]}{severity}{_RESET}"
            location = f"{_BOLD}{location}{_RESET}"
        lines.append(f"{location}: {severity}[{diagnostic.rule}]: {diagnostic.message}")
        if diagnostic.hint:
            hint = f"{_DIM}hint:{_RESET}" if colour else "hint:"
            lines.append(f"    {hint} {diagnostic.hint}")
    if summary:
        lines.append(summary_line(diagnostics, files_checked))
    return "\n".join(lines) + ("\n" if lines else "")


def diagnostic_to_dict(diagnostic: Diagnostic) -> dict[str, object]:
    """Return every field of a diagnostic as JSON values, in a fixed key order."""
    return {
        "path": diagnostic.path.as_posix(),
        "line": diagnostic.line,
        "column": diagnostic.column,
        "severity": diagnostic.severity.value,
        "rule": diagnostic.rule,
        "message": diagnostic.message,
        "pointer": diagnostic.pointer,
        "hint": diagnostic.hint,
    }


def format_json(diagnostics: Sequence[Diagnostic]) -> str:
    """Format diagnostics as a JSON list of objects, one per diagnostic, in the given order."""
    return json.dumps([diagnostic_to_dict(d) for d in diagnostics], indent=2, ensure_ascii=False) + "\n"


def _escape_data(text: str) -> str:
    # GitHub's workflow-command syntax: "%", CR and LF are percent-encoded in the message.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    # Property values also end at ":" and ",", so those are encoded too.
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_github(diagnostics: Sequence[Diagnostic]) -> str:
    """Format diagnostics as GitHub Actions ``::error``/``::warning`` workflow commands."""
    lines = []
    for diagnostic in diagnostics:
        properties = [f"file={_escape_property(diagnostic.path.as_posix())}"]
        if diagnostic.line > 0:
            properties.append(f"line={diagnostic.line}")
            properties.append(f"col={diagnostic.column}")
        properties.append(f"title={_escape_property(diagnostic.rule)}")
        message = diagnostic.message
        if diagnostic.hint:
            message += f"\nhint: {diagnostic.hint}"
        lines.append(f"::{diagnostic.severity.value} {','.join(properties)}::{_escape_data(message)}")
    return "\n".join(lines) + ("\n" if lines else "")
