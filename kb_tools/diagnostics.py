"""The one record every check returns: where a problem is, what it is and how to fix it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Diagnostic:
    """A problem found in one file.

    ``line`` and ``column`` are 1-based; 0 means the problem concerns the whole
    file. ``pointer`` is the JSON pointer of the offending node ("" for the root).
    """

    path: Path
    line: int
    column: int
    rule: str
    message: str
    severity: Severity = Severity.ERROR
    pointer: str = ""
    hint: str = ""

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR
