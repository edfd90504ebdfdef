"""Command line: usage errors exit 2 without a traceback, info matches the card, commands run end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reference_impl.bagel.checkpoint import save_checkpoint
from reference_impl.bagel.cli import main
from reference_impl.bagel.config import get_preset
from reference_impl.bagel.data import ShapeSpec
from reference_impl.bagel.model import Bagel
from reference_impl.bagel.vae import PixelUnshuffleVAE

REPO_ROOT = Path(__file__).resolve().parents[2]
BAGEL_CARD = REPO_ROOT / "kb" / "model_cards" / "bagel.yaml"


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reference_impl.bagel", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def _save_png(path: Path, image: torch.Tensor) -> Path:
    from PIL import Image

    pixels = ((image + 1) * 127.5).round().byte().permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    config = get_preset("tiny", latent_channels=48)
    save_checkpoint(directory, Bagel(config), PixelUnshuffleVAE(), Bagel(config))
    return directory


def test_missing_checkpoint_exits_2_without_traceback(tmp_path):
    image = _save_png(tmp_path / "shape.png", ShapeSpec("circle", "red", 32, 32, 12, 4, 4).render())
    result = _run_cli("caption", "--checkpoint", str(tmp_path / "nowhere"), "--image", str(image))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nowhere" in result.stderr
    assert "not found" in result.stderr


def test_unknown_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "--preset", "huge"], "unknown preset 'huge'"),
        (["train", "--preset", "bagel-7b-mot", "--out", "unused"], "too large to train"),
    ],
)
def test_bad_values_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--out", "unused", "--vit-pretrain-steps", "-1"], "argument --vit-pretrain-steps: expected an integer >= 0, got -1"),
        (["train", "--out", "unused", "--steps", "abc"], "argument --steps: expected an integer >= 1, got 'abc'"),
        (["train", "--out", "unused", "--t2i", "-2"], "argument --t2i: expected an integer >= 0, got -2"),
        (["train", "--out", "unused", "--eval-captions", "-1"], "argument --eval-captions: expected an integer >= 0, got -1"),
        (["train", "--out", "unused", "--eval-steps", "1"], "argument --eval-steps: expected an integer >= 2, got 1"),
        (["train", "--out", "unused", "--lr", "nan"], "argument --lr: expected a finite number > 0, got nan"),
        (["train", "--out", "unused", "--lr", "0"], "argument --lr: expected a finite number > 0, got 0"),
        (["generate", "--checkpoint", "c", "--prompt", "p", "--out", "o.png", "--size", "0x0"], "expected sides of at least 1 pixel"),
        (["generate", "--checkpoint", "c", "--prompt", "p", "--out", "o.png", "--shift", "0"], "argument --shift: expected a finite number > 0"),
        (["caption", "--checkpoint", "c", "--image", "i.png", "--temperature", "-1"], "argument --temperature: expected a finite number >= 0"),
    ],
)
def test_bad_option_values_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_train_output_under_a_file_exits_2(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert main(["train", "--out", str(blocker / "sub")]) == 2
    assert f"cannot create a folder under {blocker}, which is a file" in capsys.readouterr().err


def test_train_batch_smaller_than_ranks_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--out", "unused", "--t2i", "1", "--vlm", "0"]) == 2
    assert "a global batch of 1 samples cannot give each of 2 ranks one" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("out_name", "message"),
    [("g.txt", "has no image file extension"), ("afile/g.png", "which is a file")],
)
def test_generate_bad_output_exits_2(tmp_path, checkpoint, capsys, out_name, message):
    (tmp_path / "afile").write_text("")
    argv = ["generate", "--checkpoint", str(checkpoint), "--prompt", "a red circle", "--out", str(tmp_path / out_name)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["caption", "edit"])
def test_image_too_large_exits_2(tmp_path, checkpoint, capsys, command):
    image = _save_png(tmp_path / "big.png", torch.zeros(3, 64, 64))
    argv = [command, "--checkpoint", str(checkpoint), "--image", str(image)]
    if command == "edit":
        argv += ["--instruction", "make it red", "--out", str(tmp_path / "edited.png")]
    assert main(argv) == 2
    assert "image size 64x64 exceeds the model's maximum side of 32 pixels" in capsys.readouterr().err


def test_image_of_wrong_size_exits_2(tmp_path, checkpoint, capsys):
    image = _save_png(tmp_path / "odd.png", torch.zeros(3, 30, 32))
    assert main(["caption", "--checkpoint", str(checkpoint), "--image", str(image)]) == 2
    assert "not a multiple of 8" in capsys.readouterr().err


def test_generate_caption_edit_run(tmp_path, checkpoint, capsys):
    out = tmp_path / "generated.png"
    assert main(["-q", "generate", "--checkpoint", str(checkpoint), "--prompt", "a red circle", "--out", str(out), "--steps", "3"]) == 0
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (32, 32)
    source = _save_png(tmp_path / "source.png", ShapeSpec("square", "blue", 24, 32, 12, 4, 4).render())
    edited = tmp_path / "edited.png"
    assert main(["-q", "edit", "--checkpoint", str(checkpoint), "--image", str(source), "--instruction", "make it red", "--out", str(edited), "--steps", "3"]) == 0
    with Image.open(edited) as image:
        assert image.size == (32, 24)
    capsys.readouterr()
    assert main(["-q", "caption", "--checkpoint", str(checkpoint), "--image", str(source), "--int8", "--max-new-tokens", "4"]) == 0
    assert len(capsys.readouterr().out.strip("\n")) <= 4 * 3  # at most 4 bytes, each decoded to at most 3 characters


def _card_range(text: str) -> tuple[float, float]:
    # "7B" means a count in [7e9, 8e9): the card rounds down to whole billions.
    match = re.fullmatch(r"\s*(\d+)\s*B\s*", str(text))
    assert match, f"unexpected parameter count format {text!r} in {BAGEL_CARD}"
    value = int(match.group(1)) * 1e9
    return value, value + 1e9


def test_info_counts_match_bagel_card(capsys):
    assert main(["info", "--preset", "bagel-7b-mot", "--format", "json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert 7e9 <= counts["llm_active"] < 8e9
    assert 14e9 <= counts["llm_total"] < 15e9

    if not BAGEL_CARD.is_file():
        pytest.skip(f"{BAGEL_CARD} is absent, so only the fixed 7B/14B ranges were checked")
    yaml = pytest.importorskip("yaml")
    card = yaml.safe_load(BAGEL_CARD.read_text())
    entries = [e for e in card["architecture"]["parameter_counts"] if e["variant"] == "BAGEL-7B-MoT"]
    assert len(entries) == 1
    low, high = _card_range(entries[0]["active"])
    assert low <= counts["llm_active"] < high
    low, high = _card_range(entries[0]["total"])
    assert low <= counts["llm_total"] < high


def test_train_writes_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "-q", "train", "--out", str(out), "--steps", "3", "--vit-pretrain-steps", "4", "--vae", "pixel_unshuffle",
        "--t2i", "2", "--vlm", "2", "--eval-captions", "4", "--eval-images-per-class", "1", "--eval-steps", "2",
    ]
    assert main(argv) == 0
    for name in ("metrics.json", "history.json", "loss_curves.png", "samples_cfg.png", "samples_no_cfg.png"):
        assert (out / name).is_file(), name

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3
    assert metrics["train"]["vit_pretrain_steps"] == 4
    assert 0.0 <= metrics["train"]["vit_zero_shot_accuracy"] <= 1.0
    assert 0.0 <= metrics["caption_exact_match"] <= 1.0
    assert set(metrics["generation_cfg"]) >= {"color_accuracy", "shape_accuracy", "self_caption_exact_match"}
    assert metrics["wall_seconds"] > 0
    assert len(json.loads((out / "history.json").read_text())) == 3
    assert "pretrained the ViT for 4 steps" in capsys.readouterr().out

    # The checkpoint it wrote captions an image.
    image = _save_png(tmp_path / "square.png", ShapeSpec("square", "red", 32, 32, 12, 4, 4).render())
    assert main(["-q", "caption", "--checkpoint", str(out), "--image", str(image), "--max-new-tokens", "4"]) == 0
