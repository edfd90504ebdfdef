"""The full tiny BAGEL demo: train on synthetic shapes, evaluate, and print the metrics and wall time.

    python bench/bagel_demo.py [--out DIR] [extra `train` options, e.g. --steps 1200]

Runs ``python -m reference_impl.bagel train --preset tiny`` in a subprocess, so the wall time
includes start-up, autoencoder training, ViT pretraining, transformer training and
evaluation. To run two data-parallel ranks of one thread each instead, run
``torchrun --standalone --nproc_per_node=2 -m reference_impl.bagel train --preset tiny --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TIME_BUDGET_SECONDS = 300  # the demo is meant to finish within 5 minutes on 2 CPU cores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a temporary directory)")
    args, extra = parser.parse_known_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bagel-demo-"))

    command = [sys.executable, "-m", "reference_impl.bagel", "train", "--preset", "tiny", "--out", str(out), *extra]
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        print(f"demo failed with exit code {result.returncode}", file=sys.stderr)
        return result.returncode

    metrics = json.loads((out / "metrics.json").read_text())
    summary = {
        "wall_seconds": round(seconds, 1),
        "within_budget": seconds <= TIME_BUDGET_SECONDS,
        "vit_pretrain_seconds": metrics["train"].get("vit_pretrain_seconds"),
        "vit_zero_shot_accuracy": metrics["train"].get("vit_zero_shot_accuracy"),
        "train_seconds": metrics["train"]["train_seconds"],
        "eval_seconds": metrics.get("eval_seconds"),
        "caption_exact_match": metrics.get("caption_exact_match"),
        "generation_cfg": metrics.get("generation_cfg"),
        "generation_no_cfg": metrics.get("generation_no_cfg"),
    }
    print(json.dumps(summary, indent=2))
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
