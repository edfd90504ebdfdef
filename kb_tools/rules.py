"""Integrity rules: what a schema cannot check because it needs other cards or the file system.

Rules and their severities:

- ``misplaced-card`` (error): a YAML file under ``kb/`` outside ``model_cards/`` and
  ``paper_cards/``, or in a subfolder of one; it would be silently ignored.
- ``file-extension`` (error): a card file that does not end in ``.yaml`` (such as ``.yml``).
- ``id-mismatch`` (error): the card's ``id`` differs from its file name without ``.yaml``.
- ``duplicate-id`` (error): two cards, of any kind, share an id; each names the other file.
- ``reserved-id`` (error): the id is ``index``, whose page would replace the catalogue page
  (``models/index.md`` or ``papers/index.md``).
- ``unknown-reference`` (error): a model's ``papers``, a paper's ``models`` or a model's
  ``alternatives[].id`` names no existing card of that kind.
- ``self-reference`` (error): a model lists itself among its alternatives.
- ``one-sided-link`` (warning): a paper lists a model that does not list the paper back, or
  the other way round. The site shows the link on both pages either way, so nothing breaks,
  but one of the two cards is probably missing a line.
- ``missing-file`` (error): a ``resources[].path`` names no file in the repository.
- ``not-a-file`` (error): a ``resources[].path`` names a folder.
- ``path-escape`` (error): a ``resources[].path`` is absolute or leads outside the repository,
  also through a symbolic link.
- ``url-scheme`` (error): a URL field (``url``, ``repository`` or any field named ``*_url``)
  contains anything but an absolute http:// or https:// URL, such as ``javascript:``.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from kb_tools.cards import CARD_DIRS
from kb_tools.diagnostics import Diagnostic, Severity
from kb_tools.load import LoadResult, escape_pointer_token

log = logging.getLogger(__name__)

CARD_SUFFIX = ".yaml"
# Suffixes of files that look like YAML cards. Any such file in the wrong place is reported.
YAML_SUFFIXES = frozenset({".yaml", ".yml"})
# Fields that contain a URL, besides any field whose name ends in "_url".
URL_FIELDS = frozenset({"url", "repository"})
ALLOWED_URL_SCHEMES = frozenset({"http", "https"})
# Ids whose page path is taken by a generated page: a card "index" would be rendered to
# models/index.md or papers/index.md and replace the catalogue.
RESERVED_IDS = frozenset({"index"})


@dataclass
class CardFile:
    """One card file found under ``kb/``: its kind, its path relative to the root, and what loading gave."""

    kind: str
    path: Path
    loaded: LoadResult

    @property
    def data(self) -> dict[str, Any] | None:
        return self.loaded.data

    @property
    def card_id(self) -> str:
        """The id written in the card, or the file name without ``.yaml`` when there is none."""
        data = self.loaded.data or {}
        value = data.get("id")
        return value if isinstance(value, str) else self.path.stem

    def at(self, pointer: str, rule: str, message: str, hint: str = "",
           severity: Severity = Severity.ERROR) -> Diagnostic:
        line, column = self.loaded.position_of(pointer)
        return Diagnostic(self.path, line, column, rule, message, severity, pointer, hint)


# --- Files and folders --------------------------------------------------------------------


def check_card_locations(root: Path) -> list[Diagnostic]:
    """Report YAML files under ``kb/`` that are not card files in a card folder."""
    kb_dir = root / "kb"
    card_dirs = {kb_dir / name for name in CARD_DIRS.values()}
    found = []
    for directory, subdirs, files in os.walk(kb_dir, onerror=lambda error: log.debug("skipped %s", error)):
        subdirs.sort()
        folder = Path(directory)
        for name in sorted(files):
            suffix = Path(name).suffix.lower()
            if suffix not in YAML_SUFFIXES or name.startswith("."):
                continue
            relative = (folder / name).relative_to(root)
            if folder not in card_dirs:
                found.append(Diagnostic(
                    relative, 0, 0, "misplaced-card",
                    "YAML file outside the card folders is not read as a card",
                    Severity.ERROR, "",
                    "move it to kb/model_cards/ or kb/paper_cards/, or remove it"))
            elif Path(name).suffix != CARD_SUFFIX:
                found.append(Diagnostic(
                    relative, 0, 0, "file-extension",
                    f"card file ends in '{Path(name).suffix}' and is not read; cards end in '{CARD_SUFFIX}'",
                    Severity.ERROR, "", f"rename it to {Path(name).stem}{CARD_SUFFIX}"))
    return found


# --- Ids and references -------------------------------------------------------------------


def check_ids(cards: list[CardFile]) -> list[Diagnostic]:
    """Check that each id equals its file name and that no two cards share an id."""
    found = []
    by_id: dict[str, list[CardFile]] = defaultdict(list)
    for card in cards:
        data = card.data
        if data is None:
            continue
        card_id = data.get("id")
        if isinstance(card_id, str):
            by_id[card_id].append(card)
            if card_id in RESERVED_IDS:
                found.append(card.at("/id", "reserved-id",
                                     f"id '{card_id}' is reserved because its page would replace the catalogue page",
                                     "choose another id and rename the file to match"))
            if card_id != card.path.stem:
                found.append(card.at("/id", "id-mismatch",
                                     f"id '{card_id}' differs from the file name '{card.path.name}'",
                                     f"rename the file to {card_id}{CARD_SUFFIX} or set 'id: {card.path.stem}'"))

    for card_id, owners in by_id.items():
        if len(owners) < 2:
            continue
        for card in owners:
            others = ", ".join(str(other.path.as_posix()) for other in owners if other is not card)
            found.append(card.at("/id", "duplicate-id", f"id '{card_id}' is also used by {others}",
                                 "give each card its own id; ids are unique across models and papers"))
    return found


def check_references(cards: list[CardFile]) -> list[Diagnostic]:
    """Check that every model and paper id a card names exists, and that links go both ways."""
    # A card that failed to load still counts as existing under its file name. A card whose id
    # differs from its file name exists under both names. One broken file is then one error,
    # not also an error at every reference to it.
    models = _cards_by_name(cards, "model")
    papers = _cards_by_name(cards, "paper")
    found = []
    for card in cards:
        if card.data is None:
            continue
        if card.kind == "model":
            found += _check_id_list(card, "papers", "paper", papers, models, "models")
            found += _check_alternatives(card, models, papers)
        else:
            found += _check_id_list(card, "models", "model", models, papers, "papers")
    return found


def _cards_by_name(cards: list[CardFile], kind: str) -> dict[str, CardFile]:
    """Map the id and the file name (without ``.yaml``) of each ``kind`` card to the card."""
    by_name = {card.path.stem: card for card in cards if card.kind == kind}
    by_name.update({card.card_id: card for card in cards if card.kind == kind})
    return by_name


def _names(card: CardFile) -> set[str]:
    return {card.card_id, card.path.stem}


def _check_id_list(card: CardFile, field: str, target_kind: str, targets: dict[str, CardFile],
                   others: dict[str, CardFile], back_field: str) -> list[Diagnostic]:
    """Check ``card.data[field]``, a list of ids of ``target_kind`` cards that should list ``card`` back."""
    found = []
    for index, target_id in _string_items(card.data.get(field)):
        pointer = f"/{field}/{index}"
        target = targets.get(target_id)
        if target is None:
            found.append(card.at(pointer, "unknown-reference", f"no {target_kind} card has the id '{target_id}'",
                                 _reference_hint(target_id, target_kind, targets, others)))
            continue
        if target.data is None:
            continue
        back = target.data.get(back_field)
        if back is None or (isinstance(back, list) and not any(name in back for name in _names(card))):
            found.append(card.at(
                pointer, "one-sided-link",
                f"{card.kind} '{card.card_id}' lists {target_kind} '{target_id}', "
                f"but {target.path.as_posix()} does not list it in '{back_field}'",
                f"add '{card.card_id}' to '{back_field}' in {target.path.as_posix()}", Severity.WARNING))
    return found


def _check_alternatives(card: CardFile, models: dict[str, CardFile], papers: dict[str, CardFile]) -> list[Diagnostic]:
    alternatives = card.data.get("alternatives")
    if not isinstance(alternatives, list):
        return []
    found = []
    for index, entry in enumerate(alternatives):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        target_id = entry["id"]
        pointer = f"/alternatives/{index}/id"
        if target_id in _names(card):
            found.append(card.at(pointer, "self-reference", f"model '{target_id}' lists itself as an alternative",
                                 "remove the entry or name another model card"))
        elif target_id not in models:
            found.append(card.at(pointer, "unknown-reference", f"no model card has the id '{target_id}'",
                                 _reference_hint(target_id, "model", models, papers)))
    return found


def _reference_hint(target_id: str, target_kind: str, targets: dict[str, CardFile], others: dict[str, CardFile]) -> str:
    if target_id in others:
        return f"'{target_id}' is a {others[target_id].kind} card, not a {target_kind} card"
    close = difflib.get_close_matches(target_id, sorted(targets), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"create kb/{CARD_DIRS[target_kind]}/{target_id}{CARD_SUFFIX} or fix the id"


def _string_items(value: Any) -> Iterator[tuple[int, str]]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield index, item


# --- Local files and URLs -----------------------------------------------------------------


def check_resource_paths(root: Path, cards: list[CardFile]) -> list[Diagnostic]:
    """Check that every ``resources[].path`` names an existing file inside the repository."""
    real_root = root.resolve()
    found = []
    for card in cards:
        resources = (card.data or {}).get("resources")
        if not isinstance(resources, list):
            continue
        for index, resource in enumerate(resources):
            if isinstance(resource, dict) and isinstance(resource.get("path"), str):
                problem = _check_repo_path(real_root, card, f"/resources/{index}/path", resource["path"])
                if problem is not None:
                    found.append(problem)
    return found


def _check_repo_path(real_root: Path, card: CardFile, pointer: str, value: str) -> Diagnostic | None:
    written = PurePosixPath(value)
    if written.is_absolute() or "\\" in value or (len(value) > 1 and value[1] == ":"):
        return card.at(pointer, "path-escape", f"path '{value}' is absolute; resource paths are relative to the repository root",
                       "write the path from the repository root, such as 'docs/index.md'")
    try:
        target = (real_root / value).resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symbolic link loop.
        return card.at(pointer, "missing-file", f"path '{value}' cannot be resolved: {error}")
    if not target.is_relative_to(real_root):
        return card.at(pointer, "path-escape", f"path '{value}' leads outside the repository",
                       "link files inside the repository only, or give an outside page as 'url'")
    if not target.exists():
        return card.at(pointer, "missing-file", f"file '{value}' does not exist in the repository",
                       "check the spelling, or add the file in the same change")
    if not target.is_file():
        return card.at(pointer, "not-a-file", f"path '{value}' is a folder, but a resource names one file",
                       "name a file inside it, such as its index page, or give an outside page as 'url'")
    return None


def check_urls(cards: list[CardFile]) -> list[Diagnostic]:
    """Check that every URL field contains an absolute http:// or https:// URL."""
    found = []
    for card in cards:
        if card.data is None:
            continue
        for pointer, value in _url_values(card.data, ""):
            problem = _url_problem(value)
            if problem:
                found.append(card.at(pointer, "url-scheme", f"'{pointer[1:]}': {problem}",
                                     "use an absolute web address that starts with https:// or http://"))
    return found


def _url_values(node: Any, pointer: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{pointer}/{escape_pointer_token(key)}"
            if isinstance(value, str) and (key in URL_FIELDS or key.endswith("_url")):
                yield child, value
            elif isinstance(value, (dict, list)):
                yield from _url_values(value, child)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, (dict, list)):
                yield from _url_values(value, f"{pointer}/{index}")


def _url_problem(value: str) -> str:
    """Return why ``value`` is not a safe web URL, or "" when it is one."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return f"URL {value!r} contains whitespace or control characters"
    try:
        parts = urlsplit(value)
    except ValueError as error:
        return f"URL {value!r} cannot be parsed: {error}"
    if not parts.scheme:
        return f"URL {value!r} has no scheme (only http and https are allowed)"
    if parts.scheme.lower() not in ALLOWED_URL_SCHEMES:
        return f"URL scheme '{parts.scheme}' is not allowed (only http and https)"
    if not parts.netloc:
        return f"URL {value!r} has no host"
    return ""


def check_integrity(root: Path, cards: list[CardFile]) -> list[Diagnostic]:
    """Run every integrity rule over the cards. A rule skips the cards that failed to load."""
    return [
        *check_ids(cards),
        *check_references(cards),
        *check_resource_paths(root, cards),
        *check_urls(cards),
    ]
