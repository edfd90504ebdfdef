"""MkDocs plugin that adds the pages rendered from the knowledge base cards to the site.

The plugin is a thin adapter around ``kb_tools.kb.check_knowledge_base`` and
``kb_tools.render.render_pages``:

- ``on_config`` loads and checks every card. Any error fails the build with the same report
  that ``kb validate`` prints. Card warnings are logged at INFO level by default, because
  ``kb validate`` accepts them and the pages link models and papers both ways whatever the
  cards list. With ``card_warnings: warn`` they are MkDocs warnings, which ``--strict``
  turns into failures. The hook then renders the pages and, when ``mkdocs.yml`` has a
  ``nav``, inserts a section per page group.
- ``on_files`` adds the rendered pages as virtual files, in path order.
- ``on_serve`` watches the cards, schemas and templates so ``mkdocs serve`` rebuilds on a change.

Without a ``nav`` in ``mkdocs.yml``, MkDocs builds the navigation from all files, generated
ones included, so a new card never needs a navigation edit.
"""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path
from typing import Any

from mkdocs.config import config_options as c
from mkdocs.config.base import Config
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.livereload import LiveReloadServer
from mkdocs.plugins import BasePlugin
from mkdocs.structure.files import File, Files

from kb_tools.diagnostics import Diagnostic
from kb_tools.kb import check_knowledge_base
from kb_tools.render import render_pages
from kb_tools.report import format_text

log = logging.getLogger("mkdocs.plugins.neuro_omics_kb")

TEMPLATE_DIR = Path(__file__).parent / "templates"


class KnowledgeBasePluginConfig(Config):
    """Options under ``plugins: - neuro-omics-kb:`` in ``mkdocs.yml``."""

    # Repository root that contains kb/, relative to the folder of mkdocs.yml.
    kb_root = c.Type(str, default=".")
    # Navigation titles of the generated sections.
    models_title = c.Type(str, default="Models")
    papers_title = c.Type(str, default="Papers")
    reference_title = c.Type(str, default="Reference")
    # Title of the top-level nav entry that the generated sections go before. When it is unset
    # or no entry has that title, the sections go at the end.
    nav_before = c.Optional(c.Type(str))
    # Log level for card warnings such as a one-sided model-paper link; "warn" makes
    # `mkdocs build --strict` fail on them.
    card_warnings = c.Choice(("warn", "info"), default="info")


class KnowledgeBasePlugin(BasePlugin[KnowledgeBasePluginConfig]):
    """Render model and paper cards into pages and add them to the MkDocs site."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.kb_root: Path | None = None

    # Event: config. Runs first on every build, so an invalid card fails before any page is read.
    def on_config(self, config: MkDocsConfig) -> MkDocsConfig:
        self.kb_root = (Path(config.config_file_path).parent / self.config.kb_root).resolve()
        result = check_knowledge_base(self.kb_root)
        self._report(result.diagnostics, result.files_checked)
        kb = result.knowledge_base

        docs_prefix = self._docs_prefix(config)
        self.pages = render_pages(kb, docs_prefix=docs_prefix)
        log.info(
            "rendered %d pages from %d model and %d paper cards",
            len(self.pages),
            len(kb.models),
            len(kb.papers),
        )
        if config.nav is not None:
            config.nav = self._insert_nav_sections(config.nav)
        return config

    def _report(self, diagnostics: list[Diagnostic], files_checked: int) -> None:
        """Fail on card errors with the ``kb validate`` text report; log card warnings."""
        if any(d.is_error for d in diagnostics):
            report = format_text(diagnostics, files_checked)
            raise PluginError(f"invalid cards under {self.kb_root}:\n{report}")
        level = logging.WARNING if self.config.card_warnings == "warn" else logging.INFO
        for diagnostic in diagnostics:
            log.log(level, "%s", format_text([diagnostic], files_checked, summary=False).rstrip())

    def _docs_prefix(self, config: MkDocsConfig) -> str | None:
        """Return the docs folder as a repository path such as ``docs/``; None if outside."""
        docs_dir = Path(config.docs_dir).resolve()
        try:
            relative = docs_dir.relative_to(self.kb_root)
        except ValueError:
            return None
        return posixpath.join(relative.as_posix(), "") if relative.parts else ""

    def _insert_nav_sections(self, nav: list[Any]) -> list[Any]:
        """Return ``nav`` with one section per generated folder, index page first."""
        sections = []
        for folder, title in (
            ("models", self.config.models_title),
            ("papers", self.config.papers_title),
            ("reference", self.config.reference_title),
        ):
            paths = [path for path in self.pages if path.startswith(folder + "/")]
            paths.sort(key=lambda path: (not path.endswith("/index.md"), path))
            if paths:
                sections.append({title: paths})

        position = len(nav)
        for index, entry in enumerate(nav):
            if isinstance(entry, dict) and self.config.nav_before in entry:
                position = index
                break
        return nav[:position] + sections + nav[position:]

    # Event: files. Adds the rendered pages as virtual files. A docs file at the same path is
    # rejected, because one of the two would silently hide the other.
    def on_files(self, files: Files, /, *, config: MkDocsConfig) -> Files:
        for path, markdown in self.pages.items():
            if files.get_file_from_path(path) is not None:
                hand_written = posixpath.join(Path(config.docs_dir).as_posix(), path)
                raise PluginError(
                    f"{hand_written} has the path of a page rendered from the cards. "
                    "Rename or remove the hand-written file."
                )
            files.append(File.generated(config, path, content=markdown))
        return files

    # Event: serve. Rebuild when a card, a schema or a template changes. MkDocs reloads the
    # config on each rebuild, so on_config reads the cards again.
    def on_serve(
        self, server: LiveReloadServer, /, *, config: MkDocsConfig, builder: Any
    ) -> LiveReloadServer:
        if self.kb_root is not None:
            server.watch(str(self.kb_root / "kb"))
        server.watch(str(TEMPLATE_DIR))
        return server
