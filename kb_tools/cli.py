"""The ``kb`` command: validate the knowledge base, render its pages, scaffold new cards.

Exit codes: 0 when there is no error (warnings allowed), 1 when a card or schema has an error,
2 for a usage error such as an unknown option or a missing root folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from kb_tools import __version__
from kb_tools.cards import CARD_KINDS
from kb_tools.diagnostics import Diagnostic
from kb_tools.kb import SCHEMA_DIR, CheckResult, check_knowledge_base
from kb_tools.report import FORMATS, format_github, format_json, format_text, use_colour
from kb_tools.schema import load_schemas

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

# Written into every folder that ``kb render`` creates. Only a folder with this file, or an
# empty one, is replaced, so that a mistyped --out cannot delete hand-written pages.
RENDER_MARKER = ".kb-render"


class UsageError(Exception):
    """A mistake in how the command was called; exits with status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kb", description="Check, render and scaffold Neuro-Omics KB cards.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check every card against the schemas and the integrity rules")
    _add_root(validate)
    validate.add_argument("--format", choices=FORMATS, default="text",
                          help="output format: text for people (default), json for programs, "
                               "github for pull-request annotations")
    validate.add_argument("-q", "--quiet", action="store_true",
                          help="print errors only: no warnings, and no summary when there are no errors")

    render = commands.add_parser("render", help="validate, then write the Markdown pages rendered from the cards")
    _add_root(render)
    render.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder to write the pages to; replaced as a whole once every page is written")

    new = commands.add_parser("new", help="create a card with every required field left to fill in")
    new.add_argument("kind", choices=CARD_KINDS, help="kind of card")
    new.add_argument("id", help="card id: lower-case letters and digits, words joined by '-' or '_'")
    _add_root(new)
    return parser


def _add_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("."), metavar="DIR",
                        help="repository root that contains kb/ (default: the current folder)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kb`` command and return its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handlers = {"validate": run_validate, "render": run_render, "new": run_new}
    try:
        return handlers[args.command](args)
    except UsageError as error:
        print(f"kb: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _check_root(root: Path) -> Path:
    if not root.is_dir():
        raise UsageError(f"root folder not found: {root}")
    if not (root / "kb").is_dir():
        raise UsageError(f"no kb/ folder in {root}; pass the repository root with --root")
    return root


def run_validate(args: argparse.Namespace) -> int:
    result = check_knowledge_base(_check_root(args.root))
    _print_result(result, args.format, args.quiet)
    return EXIT_OK if result.ok else EXIT_INVALID


def _print_result(result: CheckResult, output_format: str, quiet: bool = False) -> None:
    diagnostics: list[Diagnostic] = result.diagnostics
    if quiet:
        diagnostics = [d for d in diagnostics if d.is_error]
    if output_format == "json":
        sys.stdout.write(format_json(diagnostics))
    elif output_format == "github":
        sys.stdout.write(format_github(diagnostics))
    else:
        text = format_text(diagnostics, result.files_checked, colour=use_colour(sys.stdout),
                           summary=not quiet or not result.ok)
        sys.stdout.write(text)


# --- kb render ----------------------------------------------------------------------------


def run_render(args: argparse.Namespace) -> int:
    root = _check_root(args.root)
    out = args.out.resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / RENDER_MARKER).exists():
        raise UsageError(f"--out {args.out} is a folder that kb render did not write, so it is not replaced. "
                         "Choose a new folder or empty it first")
    if not out.parent.is_dir():
        raise UsageError(f"parent folder of --out does not exist: {out.parent}")

    result = check_knowledge_base(root)
    if not result.ok:
        _print_result(result, "text")
        print(f"kb: error: not rendering {out} because the knowledge base has errors", file=sys.stderr)
        return EXIT_INVALID

    # Imported here so that validating works even when the renderer's dependencies are missing.
    from kb_tools.render import render_pages

    pages = render_pages(result.knowledge_base)
    try:
        write_pages_atomically(pages, out)
    except OSError as error:
        print(f"kb: error: cannot write pages to {out}: {error.strerror or error}", file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {len(pages)} pages to {out}")
    return EXIT_OK


def write_pages_atomically(pages: dict[str, str], out: Path) -> None:
    """Write ``pages`` ({relative path: text}) so that ``out`` is either the old or the complete new folder.

    The pages are written into a temporary folder next to ``out``, which then replaces ``out``.
    The new folder also gets an empty ``RENDER_MARKER`` file.
    """
    for name in pages:
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"renderer returned a page path outside the output folder: {name!r}")

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        for name, text in sorted(pages.items()):
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        (staging / RENDER_MARKER).write_text("", encoding="utf-8")
        os.chmod(staging, 0o755)
        if not out.exists():
            os.replace(staging, out)
            return

        # NOTE: between the two renames ``out`` briefly does not exist, but it is never half written.
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, retired / out.name)
        try:
            os.replace(staging, out)
        except OSError:
            os.replace(retired / out.name, out)
            os.rmdir(retired)
            raise
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- kb new -------------------------------------------------------------------------------


def run_new(args: argparse.Namespace) -> int:
    from kb_tools.scaffold import ScaffoldError, create_card

    root = _check_root(args.root)
    schemas, problems = load_schemas(root / SCHEMA_DIR)
    if schemas is None:
        sys.stdout.write(format_text(problems, 0, colour=use_colour(sys.stdout), summary=False))
        return EXIT_INVALID
    try:
        path = create_card(root, schemas, args.kind, args.id)
    except ScaffoldError as error:
        print(f"kb: error: {error}", file=sys.stderr)
        if error.hint:
            print(f"    hint: {error.hint}", file=sys.stderr)
        return EXIT_USAGE
    print(f"created {path}; fill in the empty fields, then run 'kb validate'")
    return EXIT_OK
