"""The kb command: exit codes, output formats, kb new and kb render, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kb_tools import cli
from kb_tools.cli import main, write_pages_atomically
from kb_tools.kb import check_knowledge_base
from kb_tools.scaffold import scaffold_card
from kb_tools.schema import load_schemas

from kb_helpers import CASES_DIR, SCHEMA_DIR, describe, make_repo, run_kb

ENUM_CASE = CASES_DIR / "invalid" / "misspelled-enum"
WARNING_CASE = CASES_DIR / "invalid" / "one-sided-link"


def _case_repo(tmp_path: Path, case: Path) -> Path:
    repo = make_repo(tmp_path / "repo", case)
    (repo / "expected.yaml").unlink()
    return repo


# --- Usage errors -------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    [],
    ["validate", "--no-such-flag"],
    ["validate", "--format", "xml"],
    ["frobnicate"],
    ["new", "dataset", "x"],
    ["render"],
])
def test_usage_errors_exit_2(args: list[str], empty_repo: Path):
    result = run_kb(*args, cwd=empty_repo)

    assert result.returncode == 2, describe(result)
    assert "usage: kb" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_root_exits_2(tmp_path: Path):
    result = run_kb("validate", "--root", str(tmp_path / "absent"))

    assert result.returncode == 2, describe(result)
    assert result.stderr == f"kb: error: root folder not found: {tmp_path / 'absent'}\n"


def test_root_without_kb_exits_2(tmp_path: Path):
    result = run_kb("validate", "--root", str(tmp_path))

    assert result.returncode == 2, describe(result)
    assert "no kb/ folder" in result.stderr


# --- kb validate --------------------------------------------------------------------------


def test_validate_text_output(tmp_path: Path):
    repo = _case_repo(tmp_path, ENUM_CASE)

    result = run_kb("validate", cwd=repo)

    assert result.returncode == 1, describe(result)
    assert result.stdout == (
        "kb/model_cards/demo-model.yaml:3:11: error[schema.enum]: 'modality': 'genomics' is not an allowed value\n"
        "    hint: did you mean 'genetics'? allowed values: genetics, brain, behaviour, clinical, multimodal, general\n"
        "1 error, 0 warnings in 2 files\n"
    )
    assert result.stderr == ""


def test_validate_json_output(tmp_path: Path):
    repo = _case_repo(tmp_path, ENUM_CASE)

    result = run_kb("validate", "--root", str(repo), "--format", "json")

    assert result.returncode == 1, describe(result)
    assert json.loads(result.stdout) == [{
        "path": "kb/model_cards/demo-model.yaml",
        "line": 3,
        "column": 11,
        "severity": "error",
        "rule": "schema.enum",
        "message": "'modality': 'genomics' is not an allowed value",
        "pointer": "/modality",
        "hint": "did you mean 'genetics'? allowed values: genetics, brain, behaviour, clinical, multimodal, general",
    }]


def test_validate_github_output(tmp_path: Path):
    repo = _case_repo(tmp_path, ENUM_CASE)

    result = run_kb("validate", "--root", str(repo), "--format", "github")

    assert result.returncode == 1, describe(result)
    assert result.stdout == (
        "::error file=kb/model_cards/demo-model.yaml,line=3,col=11,title=schema.enum::"
        "'modality': 'genomics' is not an allowed value%0A"
        "hint: did you mean 'genetics'? allowed values: genetics, brain, behaviour, clinical, multimodal, general\n"
    )


def test_warnings_alone_exit_0(tmp_path: Path):
    repo = _case_repo(tmp_path, WARNING_CASE)

    result = run_kb("validate", "--root", str(repo))

    assert result.returncode == 0, describe(result)
    assert "warning[one-sided-link]" in result.stdout
    assert result.stdout.endswith("0 errors, 1 warning in 2 files\n")


def test_quiet_hides_warnings_and_summary(tmp_path: Path):
    repo = _case_repo(tmp_path, WARNING_CASE)

    result = run_kb("validate", "--root", str(repo), "-q")

    assert result.returncode == 0, describe(result)
    assert result.stdout == ""


def test_quiet_still_prints_errors(tmp_path: Path):
    repo = _case_repo(tmp_path, ENUM_CASE)

    result = run_kb("validate", "--root", str(repo), "-q")

    assert result.returncode == 1, describe(result)
    assert result.stdout.splitlines()[0].startswith("kb/model_cards/demo-model.yaml:3:11: error[schema.enum]")
    assert result.stdout.endswith("1 error, 0 warnings in 2 files\n")


def test_no_colour_on_a_pipe(valid_repo: Path):
    env_without = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}

    result = subprocess.run([sys.executable, "-m", "kb_tools", "validate", "--root", str(valid_repo)],
                            env=env_without, capture_output=True, text=True, timeout=120)

    assert "\033" not in result.stdout


def test_card_folder_that_is_a_file(empty_repo: Path):
    (empty_repo / "kb" / "model_cards").rmdir()
    (empty_repo / "kb" / "model_cards").write_text("not a folder")

    result = run_kb("validate", "--root", str(empty_repo))

    assert result.returncode == 1, describe(result)
    assert "kb/model_cards: error[not-readable]: cannot list folder" in result.stdout
    assert "Traceback" not in result.stderr


def test_missing_card_folder(empty_repo: Path):
    (empty_repo / "kb" / "paper_cards").rmdir()

    result = run_kb("validate", "--root", str(empty_repo))

    assert result.returncode == 1, describe(result)
    assert "kb/paper_cards: error[missing-folder]" in result.stdout


def test_unreadable_card_file(empty_repo: Path):
    (empty_repo / "kb" / "model_cards" / "folder.yaml").mkdir()
    (empty_repo / "kb" / "model_cards" / "dangling.yaml").symlink_to(empty_repo / "nowhere.yaml")

    result = run_kb("validate", "--root", str(empty_repo), "--format", "json")

    assert result.returncode == 1, describe(result)
    assert [(d["path"], d["rule"]) for d in json.loads(result.stdout)] == [
        ("kb/model_cards/dangling.yaml", "not-readable"),
        ("kb/model_cards/folder.yaml", "not-readable"),
    ]
    assert "Traceback" not in result.stderr


def test_missing_schemas_exit_1(valid_repo: Path):
    (valid_repo / "kb" / "schemas" / "defs.schema.json").unlink()

    result = run_kb("validate", "--root", str(valid_repo))

    assert result.returncode == 1, describe(result)
    assert "kb/schemas/defs.schema.json: error[schema-file]: cannot read schema" in result.stdout


def test_resource_symlink_leaving_repository(valid_repo: Path, tmp_path: Path):
    outside = tmp_path / "outside.md"
    outside.write_text("secret")
    (valid_repo / "docs" / "walkthrough.md").unlink()
    (valid_repo / "docs" / "walkthrough.md").symlink_to(outside)

    result = check_knowledge_base(valid_repo)

    assert [(d.path.as_posix(), d.line, d.column, d.rule) for d in result.diagnostics] == [
        ("kb/model_cards/helix-lm.yaml", 91, 11, "path-escape"),
    ]
    assert "helix-lm" not in result.knowledge_base.models
    assert "cortex-vit" in result.knowledge_base.models


def test_card_symlink_leaving_repository(valid_repo: Path, tmp_path: Path):
    outside = tmp_path / "outside.yaml"
    outside.write_text("id: outside\n")
    (valid_repo / "kb" / "model_cards" / "outside.yaml").symlink_to(outside)

    result = check_knowledge_base(valid_repo)

    assert [(d.path.as_posix(), d.line, d.rule) for d in result.diagnostics] == [
        ("kb/model_cards/outside.yaml", 0, "path-escape"),
    ]


# --- kb new -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["model", "paper"])
def test_new_card_fails_only_on_placeholders(kind: str, empty_repo: Path):
    schemas, _ = load_schemas(SCHEMA_DIR)
    scaffold = scaffold_card(schemas, kind, "fresh-card")

    result = run_kb("new", kind, "fresh-card", "--root", str(empty_repo))

    assert result.returncode == 0, describe(result)
    folder = "model_cards" if kind == "model" else "paper_cards"
    path = empty_repo / "kb" / folder / "fresh-card.yaml"
    assert path.read_text(encoding="utf-8") == scaffold.text
    checked = check_knowledge_base(empty_repo)
    assert scaffold.placeholders
    assert sorted(d.pointer for d in checked.diagnostics) == sorted(scaffold.placeholders)
    assert {d.rule for d in checked.diagnostics} == {"schema.type"}
    assert all(d.path == Path("kb", folder, "fresh-card.yaml") for d in checked.diagnostics)


def test_new_model_placeholders(empty_repo: Path):
    schemas, _ = load_schemas(SCHEMA_DIR)

    scaffold = scaffold_card(schemas, "model", "fresh")

    assert scaffold.placeholders == [
        "/name", "/modality", "/summary", "/architecture/type", "/papers", "/verification/status",
        "/sources/0/title", "/sources/0/url", "/sources/0/kind",
    ]
    assert "id: fresh\n" in scaffold.text
    assert "# Name: The model's name as its authors write it.\nname:\n" in scaffold.text
    comments = " ".join(line.strip("# ") for line in scaffold.text.splitlines() if line.startswith("#"))
    assert "One of: genetics, brain, behaviour, clinical, multimodal, general." in comments


def test_new_card_filled_in_validates(empty_repo: Path):
    assert main(["new", "paper", "filled", "--root", str(empty_repo)]) == 0
    path = empty_repo / "kb" / "paper_cards" / "filled.yaml"
    text = path.read_text(encoding="utf-8")
    for field, value in [("title:", "title: Filled"), ("authors:", "authors: [Ada Lovelace]"),
                         ("year:", "year: 2024"), ("summary:", "summary: Filled in."),
                         ("  status:", "  status: unverified"), ("    title:", "    title: Filled"),
                         ("    url:", "    url: https://example.org"), ("    kind:", "    kind: paper")]:
        text = text.replace(f"\n{field}\n", f"\n{value}\n", 1)
    path.write_text(text, encoding="utf-8")

    assert check_knowledge_base(empty_repo).diagnostics == []


@pytest.mark.parametrize("card_id", ["Bad_Id", "has space", "lead-", "a" * 65, "x/y"])
def test_new_rejects_invalid_id(card_id: str, empty_repo: Path):
    result = run_kb("new", "model", card_id, "--root", str(empty_repo))

    assert result.returncode == 2, describe(result)
    assert result.stderr.startswith(f"kb: error: invalid card id '{card_id}'\n")
    assert list((empty_repo / "kb" / "model_cards").iterdir()) == []


def test_new_rejects_reserved_id(empty_repo: Path):
    result = run_kb("new", "model", "index", "--root", str(empty_repo))

    assert result.returncode == 2, describe(result)
    assert "card id 'index' is reserved" in result.stderr
    assert list((empty_repo / "kb" / "model_cards").iterdir()) == []


def test_new_rejects_existing_id_of_other_kind(empty_repo: Path):
    assert main(["new", "paper", "taken", "--root", str(empty_repo)]) == 0

    result = run_kb("new", "model", "taken", "--root", str(empty_repo))

    assert result.returncode == 2, describe(result)
    assert "a paper card with id 'taken' already exists: kb/paper_cards/taken.yaml" in result.stderr
    assert not (empty_repo / "kb" / "model_cards" / "taken.yaml").exists()


# --- kb render ----------------------------------------------------------------------------


def test_render_writes_pages(valid_repo: Path, tmp_path: Path):
    out = tmp_path / "pages"

    result = run_kb("render", "--root", str(valid_repo), "--out", str(out))

    assert result.returncode == 0, describe(result)
    assert (out / "models" / "index.md").is_file()
    assert (out / "papers" / "index.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pages", "repo"]


def test_render_refuses_invalid_kb(tmp_path: Path):
    repo = _case_repo(tmp_path, ENUM_CASE)
    out = tmp_path / "pages"

    result = run_kb("render", "--root", str(repo), "--out", str(out))

    assert result.returncode == 1, describe(result)
    assert "error[schema.enum]" in result.stdout
    assert "not rendering" in result.stderr
    assert not out.exists()


def test_render_replaces_old_output(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.md").write_text("old")

    write_pages_atomically({"a.md": "A", "sub/b.md": "B"}, out)

    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        ".kb-render", "a.md", "sub/b.md"]
    assert (out / "sub" / "b.md").read_text() == "B"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_render_failure_keeps_old_output(tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.md").write_text("old")
    real_write_text = Path.write_text
    calls = []

    def failing_write_text(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write_text)

    with pytest.raises(OSError):
        write_pages_atomically({"a.md": "A", "b.md": "B"}, out)

    assert [p.name for p in out.iterdir()] == ["stale.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_render_rejects_page_outside_output(tmp_path: Path):
    with pytest.raises(ValueError, match="outside the output folder"):
        write_pages_atomically({"../escape.md": "x"}, tmp_path / "out")

    assert not (tmp_path / "out").exists()


def test_render_twice_replaces_own_output(valid_repo: Path, tmp_path: Path):
    out = tmp_path / "pages"

    first = run_kb("render", "--root", str(valid_repo), "--out", str(out))
    second = run_kb("render", "--root", str(valid_repo), "--out", str(out))

    assert first.returncode == 0, describe(first)
    assert second.returncode == 0, describe(second)
    assert (out / ".kb-render").is_file()


def test_render_keeps_foreign_folder(valid_repo: Path, tmp_path: Path):
    out = tmp_path / "docs"
    out.mkdir()
    (out / "index.md").write_text("hand-written")

    result = run_kb("render", "--root", str(valid_repo), "--out", str(out))

    assert result.returncode == 2, describe(result)
    assert "kb render did not write" in result.stderr
    assert (out / "index.md").read_text() == "hand-written"


def test_render_out_is_a_file(valid_repo: Path, tmp_path: Path):
    (tmp_path / "file").write_text("x")

    assert main(["render", "--root", str(valid_repo), "--out", str(tmp_path / "file")]) == cli.EXIT_USAGE


def test_render_failed_swap_restores_old_output(tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.md").write_text("old")
    real_replace = os.replace

    def failing_replace(source, target):
        if Path(source).name.startswith(".out.new-"):
            raise OSError(16, "Device or resource busy")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)

    with pytest.raises(OSError):
        write_pages_atomically({"a.md": "A"}, out)

    assert (out / "stale.md").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
