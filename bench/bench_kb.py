"""Time ``kb validate`` against parsing the same files with PyYAML's C loader.

Two knowledge bases are measured: the one shipped in kb/, and a generated one of 10,000 cards.
The generated cards are copies of the shipped ones with new ids, so they have realistic size
and shape. Half are models and half papers, linked both ways, and each model names two
alternatives. For each knowledge base, the script prints the time of a full check (load, schema, rules) and of
``yaml.load(text, Loader=yaml.CSafeLoader)`` over the same files, both including file reads,
and their ratio. Run from the repository root:

    .venv/bin/python bench/bench_kb.py [--cards N] [--repeat R]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from kb_tools.kb import check_knowledge_base, find_card_files
from kb_tools.schema import _load_schemas_cached

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_only(root: Path) -> int:
    """Parse every card file under ``root`` with the C loader, and return the number of files."""
    locations, _ = find_card_files(root)
    for _, path in locations:
        yaml.load((root / path).read_bytes(), Loader=yaml.CSafeLoader)
    return len(locations)


def validate(root: Path) -> int:
    result = check_knowledge_base(root)
    if not result.ok:
        raise SystemExit(f"benchmark knowledge base under {root} has {result.error_count} errors")
    return result.files_checked


def measure_pair(first: Callable[[Path], int], second: Callable[[Path], int], root: Path,
                 repeat: int) -> tuple[float, float]:
    """Return the fastest of ``repeat`` wall times of each function, in seconds.

    The two run in turn, so that a change in machine load affects both alike.
    """
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for function, record in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            function(root)
            record.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def template_cards(root: Path) -> tuple[list[dict], list[dict]]:
    """Return the shipped model and paper cards as plain data, to copy from."""
    locations, _ = find_card_files(root)
    models, papers = [], []
    for kind, path in locations:
        data = yaml.load((root / path).read_bytes(), Loader=yaml.CSafeLoader)
        (models if kind == "model" else papers).append(data)
    if not models or not papers:
        raise SystemExit("the generated benchmark needs at least one shipped model card and one paper card")
    return models, papers


def generate_kb(target: Path, n_cards: int) -> None:
    """Write ``n_cards`` cards under ``target/kb``, copied from the shipped cards with new ids."""
    shutil.copytree(REPO_ROOT / "kb" / "schemas", target / "kb" / "schemas")
    (target / "kb" / "model_cards").mkdir()
    (target / "kb" / "paper_cards").mkdir()
    models, papers = template_cards(REPO_ROOT)
    n_models = n_cards // 2

    for index in range(n_models):
        model = copy.deepcopy(models[index % len(models)])
        model_id, paper_id = f"model-{index:05d}", f"paper-{index:05d}"
        model["id"] = model_id
        model["papers"] = [paper_id]
        model["alternatives"] = [
            {"id": f"model-{(index + step) % n_models:05d}", "when": "A neighbouring model in the generated set."}
            for step in (1, 2)
        ]
        _write(target / "kb" / "model_cards" / f"{model_id}.yaml", model)

        paper = copy.deepcopy(papers[index % len(papers)])
        paper["id"] = paper_id
        paper["models"] = [model_id]
        _write(target / "kb" / "paper_cards" / f"{paper_id}.yaml", paper)

    # Resource paths in the copied cards must exist in the generated repository too.
    for card in models + papers:
        for resource in card.get("resources", []):
            if "path" in resource:
                path = target / resource["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()


def _write(path: Path, data: dict) -> None:
    text = yaml.dump(data, Dumper=yaml.CSafeDumper, sort_keys=False, allow_unicode=True, width=100)
    path.write_text(text, encoding="utf-8")


def report(name: str, root: Path, repeat: int) -> None:
    _load_schemas_cached.cache_clear()
    files = validate(root)  # Warms the schema cache and the file system cache for both runs.
    check_time, parse_time = measure_pair(validate, parse_only, root, repeat)
    size = sum((root / path).stat().st_size for _, path in find_card_files(root)[0])
    print(f"{name}: {files} cards, {size / 1024:.0f} KiB")
    print(f"  kb validate (load + schema + rules): {check_time * 1000:9.1f} ms  ({check_time / files * 1e6:.0f} us/card)")
    print(f"  yaml.load with CSafeLoader only:     {parse_time * 1000:9.1f} ms  ({parse_time / files * 1e6:.0f} us/card)")
    print(f"  ratio validate / parse:              {check_time / parse_time:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", type=int, default=10_000, help="number of cards in the generated knowledge base")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest is printed")
    args = parser.parse_args()

    report("shipped KB", REPO_ROOT, max(args.repeat, 10))
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as scratch:
        generate_kb(Path(scratch), args.cards)
        report("generated KB", Path(scratch), args.repeat)


if __name__ == "__main__":
    main()
