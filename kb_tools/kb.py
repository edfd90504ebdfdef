"""Load a whole knowledge base: find the card files, then load, schema-check and rule-check them.

Every problem in every file is collected before anything is returned. The caller chooses how
to print them and which exit code follows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from kb_tools.cards import CARD_DIRS, CARD_KINDS, Card, KnowledgeBase
from kb_tools.diagnostics import Diagnostic, Severity
from kb_tools.load import load_card_file
from kb_tools.rules import CARD_SUFFIX, CardFile, check_card_locations, check_integrity
from kb_tools.schema import SchemaSet, check_card, load_schemas

log = logging.getLogger(__name__)

SCHEMA_DIR = Path("kb") / "schemas"
# Schema keywords whose message an integrity rule at the same node replaces with a more
# specific one: "path-escape" explains a failed path pattern, "url-scheme" a failed URL.
SHADOWED_SCHEMA_RULES = frozenset({"schema.pattern", "schema.format"})


@dataclass
class CheckResult:
    """The outcome of checking a knowledge base: the valid cards and every diagnostic."""

    knowledge_base: KnowledgeBase
    diagnostics: list[Diagnostic] = field(default_factory=list)
    files_checked: int = 0

    @property
    def error_count(self) -> int:
        return sum(d.is_error for d in self.diagnostics)

    @property
    def warning_count(self) -> int:
        return len(self.diagnostics) - self.error_count

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def find_card_files(root: Path) -> tuple[list[tuple[str, Path]], list[Diagnostic]]:
    """Return (kind, path relative to ``root``) for every ``*.yaml`` file in the card folders."""
    found: list[tuple[str, Path]] = []
    diagnostics = []
    for kind, folder in CARD_DIRS.items():
        directory = root / "kb" / folder
        relative_dir = directory.relative_to(root)
        try:
            entries = sorted(entry.name for entry in directory.iterdir())
        except FileNotFoundError:
            diagnostics.append(Diagnostic(relative_dir, 0, 0, "missing-folder", f"folder {relative_dir.as_posix()} does not exist",
                                          Severity.ERROR, "", "run the command from the repository root or pass --root"))
            continue
        except OSError as error:
            diagnostics.append(Diagnostic(relative_dir, 0, 0, "not-readable",
                                          f"cannot list folder: {error.strerror or error}",
                                          Severity.ERROR, "", "check the folder's permissions"))
            continue
        for name in entries:
            if not name.endswith(CARD_SUFFIX) or name.startswith("."):
                continue
            relative = relative_dir / name
            if not (root / relative).resolve().is_relative_to(root.resolve()):
                diagnostics.append(Diagnostic(relative, 0, 0, "path-escape",
                                              "card file is a symbolic link to a file outside the repository, so it is not read",
                                              Severity.ERROR, "", "copy the card into the repository in place of the link"))
                continue
            found.append((kind, relative))
    return found, diagnostics


def check_knowledge_base(root: Path) -> CheckResult:
    """Load and check every card under ``root/kb``. The result's KB contains the cards without errors."""
    root = Path(root)
    schemas, diagnostics = load_schemas(root / SCHEMA_DIR)
    diagnostics = [_relative(d, root) for d in diagnostics]
    diagnostics += check_card_locations(root)

    locations, found_diagnostics = find_card_files(root)
    diagnostics += found_diagnostics
    cards = [CardFile(kind, path, load_card_file(root / path, path)) for kind, path in locations]

    for card in cards:
        diagnostics += card.loaded.diagnostics
        if card.data is not None and schemas is not None:
            diagnostics += _check_card_schema(schemas, card)
    diagnostics = _drop_shadowed(diagnostics, check_integrity(root, cards))
    diagnostics.sort(key=_sort_key)

    knowledge_base = KnowledgeBase(root)
    if schemas is not None:
        failed = {d.path for d in diagnostics if d.is_error}
        for card in cards:
            if card.data is not None and card.path not in failed:
                target = knowledge_base.models if card.kind == "model" else knowledge_base.papers
                target[card.card_id] = Card(card.kind, card.card_id, card.path, card.data)
    log.debug("checked %d card files under %s: %d diagnostics", len(cards), root, len(diagnostics))
    return CheckResult(knowledge_base, diagnostics, len(cards))


def _check_card_schema(schemas: SchemaSet, card: CardFile) -> list[Diagnostic]:
    """Validate a card against the schema of its folder, or report that it belongs in the other folder.

    A card that fails its folder's schema but is valid against the other kind's schema gets one
    ``wrong-folder`` error in place of an error for every field. Its kind is then corrected, so
    the integrity rules resolve references to it.
    """
    found = check_card(schemas, card.kind, card.loaded)
    other = next(kind for kind in CARD_KINDS if kind != card.kind)
    if not found or not schemas.quick_checks[other](card.data):
        return found
    folder, other_folder = CARD_DIRS[card.kind], CARD_DIRS[other]
    card.kind = other
    return [Diagnostic(card.path, 0, 0, "wrong-folder", f"this is a {other} card, but it is in kb/{folder}/",
                       Severity.ERROR, "", f"move it to kb/{other_folder}/")]


def load_knowledge_base(root: Path) -> tuple[KnowledgeBase, list[Diagnostic]]:
    """Load the knowledge base under ``root``, and return the cards that passed and every diagnostic."""
    result = check_knowledge_base(root)
    return result.knowledge_base, result.diagnostics


def _drop_shadowed(schema_diagnostics: list[Diagnostic], rule_diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Merge the two lists, dropping a schema message that a rule explains at the same node."""
    explained = {(d.path, d.pointer) for d in rule_diagnostics if d.pointer}
    kept = [d for d in schema_diagnostics
            if not (d.rule in SHADOWED_SCHEMA_RULES and (d.path, d.pointer) in explained)]
    return kept + rule_diagnostics


def _relative(diagnostic: Diagnostic, root: Path) -> Diagnostic:
    try:
        path = diagnostic.path.resolve().relative_to(root.resolve())
    except ValueError:
        return diagnostic
    return Diagnostic(path, diagnostic.line, diagnostic.column, diagnostic.rule, diagnostic.message,
                      diagnostic.severity, diagnostic.pointer, diagnostic.hint)


def _sort_key(diagnostic: Diagnostic) -> tuple:
    return (diagnostic.path.as_posix(), diagnostic.line, diagnostic.column, diagnostic.rule, diagnostic.message)
