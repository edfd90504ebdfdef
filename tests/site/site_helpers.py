"""Helpers for the site tests: a fixture site in a temporary folder and a real MkDocs build.

The fixture site is ``tests/site/fixtures`` (cards and two hand-written pages) plus the
repository's ``kb/schemas`` and ``mkdocs.yml``, so the tests check the real configuration and
the real schemas against cards whose content the tests control.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"

# A fixed build date for sitemap.xml and the timestamp in the gzip header of sitemap.xml.gz.
SOURCE_DATE_EPOCH = "1767225600"  # 2026-01-01T00:00:00Z


def make_site(destination: Path) -> Path:
    """Copy the fixture site to ``destination`` and return it."""
    shutil.copytree(FIXTURES / "kb", destination / "kb")
    shutil.copytree(REPO_ROOT / "kb" / "schemas", destination / "kb" / "schemas")
    shutil.copytree(FIXTURES / "docs", destination / "docs")
    shutil.copy2(REPO_ROOT / "mkdocs.yml", destination / "mkdocs.yml")
    return destination


def build_env() -> dict[str, str]:
    """Return the environment for a reproducible, quiet MkDocs build."""
    env = dict(os.environ)
    env.update(
        SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH,
        NO_COLOR="1",
        # Material for MkDocs 9.7+ prints an end-of-life banner on every build without this.
        NO_MKDOCS_2_WARNING="1",
    )
    return env


def mkdocs_build(site_root: Path, output: Path) -> subprocess.CompletedProcess[str]:
    """Run ``mkdocs build --strict`` on ``site_root`` into ``output`` and return the process."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(site_root / "mkdocs.yml"),
            "--site-dir",
            str(output),
        ],
        cwd=site_root,
        env=build_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def describe(process: subprocess.CompletedProcess[str]) -> str:
    """Return a build's exit code and output, for assertion messages."""
    return f"exit code {process.returncode}\nstdout:\n{process.stdout}\nstderr:\n{process.stderr}"
