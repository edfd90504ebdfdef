"""Helpers for the kb_tools tests: the repository paths, scratch repositories and a runner for the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO_ROOT / "kb" / "schemas"
CASES_DIR = REPO_ROOT / "tests" / "cases"


def make_repo(target: Path, source: Path | None = None) -> Path:
    """Create a repository root at ``target`` with the real schemas, copying ``source`` into it first."""
    if source is not None:
        shutil.copytree(source, target, dirs_exist_ok=True)
    (target / "kb" / "model_cards").mkdir(parents=True, exist_ok=True)
    (target / "kb" / "paper_cards").mkdir(parents=True, exist_ok=True)
    shutil.copytree(SCHEMA_DIR, target / "kb" / "schemas", dirs_exist_ok=True)
    return target


def run_kb(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m kb_tools`` with ``args`` as a user would, without colour."""
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "kb_tools", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """Return the exit code and both output streams, for assertion messages."""
    return f"exit code {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
