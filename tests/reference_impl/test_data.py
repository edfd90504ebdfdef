"""Synthetic shapes: rendering, labels, held-out split, CFG dropout, plan layout, rule classifier."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impl.bagel.data import (
    CLASSES,
    COLOR_NAMES,
    IMAGE_SIZES,
    MAX_SHAPE_SIZE,
    MIN_SHAPE_SIZE,
    SHAPES,
    CfgDropout,
    ShapeSpec,
    ShapesTaskSampler,
    TaskMix,
    apply_cfg_dropout,
    heldout_specs,
    sample_spec,
)
from reference_impl.bagel.metrics import caption_exact_match, classify_image, generation_accuracy
from reference_impl.bagel.packing import SequenceItem
from reference_impl.bagel.tokenizer import ByteTokenizer
from reference_impl.bagel.vae import PixelUnshuffleVAE

TOKENIZER = ByteTokenizer()


def _sampler(mix: TaskMix, dropout: CfgDropout | None = None, split: str = "train") -> ShapesTaskSampler:
    return ShapesTaskSampler(PixelUnshuffleVAE(), mix, dropout or CfgDropout(0.0, 0.0, 0.0), split)


@pytest.mark.parametrize("image_size", IMAGE_SIZES)
def test_classifier_correct_on_all_classes(image_size):
    height, width = image_size
    for color, shape in CLASSES:
        for size in (MIN_SHAPE_SIZE, (MIN_SHAPE_SIZE + MAX_SHAPE_SIZE) // 2, min(MAX_SHAPE_SIZE, height, width)):
            for top, left in ((0, 0), (height - size, width - size), ((height - size) // 2, 3)):
                spec = ShapeSpec(shape, color, height, width, size, top, left)
                judgement = classify_image(spec.render())
                assert (judgement.color, judgement.shape) == (color, shape), spec


def test_classifier_reports_empty_image():
    judgement = classify_image(-torch.ones(3, 32, 32))
    assert judgement.color is None
    assert judgement.shape is None


def test_render_values_and_area():
    spec = ShapeSpec("square", "yellow", 24, 32, 12, 5, 7)
    image = spec.render()
    assert image.shape == (3, 24, 32)
    assert set(image.unique().tolist()) == {-1.0, 1.0}
    foreground = (image > 0).any(dim=0)
    assert foreground.sum().item() == 12 * 12
    assert torch.equal(image[:, 5, 7], torch.tensor([1.0, 1.0, -1.0]))


def test_spec_rejects_out_of_bounds_shape():
    with pytest.raises(ValueError, match="outside"):
        ShapeSpec("circle", "red", 24, 32, 18, 10, 0)


def test_heldout_split_disjoint_from_training():
    generator = torch.Generator().manual_seed(0)
    train = {sample_spec(generator, "train") for _ in range(3000)}
    held_out = set(heldout_specs(300, seed=5))
    assert not any(spec.held_out for spec in train)
    assert all(spec.held_out for spec in held_out)
    assert not train & held_out
    # Every class appears in the held-out set, so caption accuracy covers all of them.
    assert {(s.color, s.shape) for s in held_out} == set(CLASSES)


def test_heldout_specs_fixed_by_seed():
    assert heldout_specs(20, seed=3) == heldout_specs(20, seed=3)
    assert heldout_specs(20, seed=3) != heldout_specs(20, seed=4)


def test_plans_consistent_with_images():
    sampler = _sampler(TaskMix(t2i=6, vlm=6, edit=6))
    samples = sampler.sample_batch(torch.Generator().manual_seed(0))
    assert [s.task for s in samples[:3]] == ["t2i", "vlm", "edit"]
    for sample in samples:
        image = sample.spec.render()
        judgement = classify_image(image)
        assert (judgement.color, judgement.shape) == (sample.spec.color, sample.spec.shape)
        plan = sample.plan
        if sample.task == "t2i":
            assert [i.type for i in plan] == ["text", "vae_image"]
            assert TOKENIZER.decode(plan[0].text_ids) == sample.spec.caption
            assert (plan[0].loss, plan[0].enable_cfg) == (False, True)
            assert (plan[1].loss, plan[1].enable_cfg) == (True, False)
            assert torch.equal(plan[1].latent, sampler.vae.encode(image[None])[0])
        elif sample.task == "vlm":
            assert [i.type for i in plan] == ["vit_image", "text"]
            assert torch.equal(plan[0].image, image)
            assert TOKENIZER.decode(plan[1].text_ids) == sample.spec.caption
            assert (plan[1].loss, plan[1].enable_cfg) == (True, False)
        else:
            target = sample.target
            assert [i.type for i in plan] == ["vae_image", "vit_image", "text", "vae_image"]
            assert (target.shape, target.size, target.top, target.left) == (
                sample.spec.shape, sample.spec.size, sample.spec.top, sample.spec.left,
            )
            assert target.color != sample.spec.color
            assert TOKENIZER.decode(plan[2].text_ids) == f"make it {target.color}"
            assert [i.enable_cfg for i in plan] == [True, True, True, False]
            assert [i.loss for i in plan] == [False, False, False, True]
            assert torch.equal(plan[0].latent, sampler.vae.encode(image[None])[0])
            assert torch.equal(plan[3].latent, sampler.vae.encode(target.render()[None])[0])


def test_sampler_reproducible_with_seed():
    def draw(seed):
        samples = _sampler(TaskMix(4, 4, 2), CfgDropout()).sample_batch(torch.Generator().manual_seed(seed))
        return [(s.spec, s.target, [i.dropped for i in s.plan]) for s in samples]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_cfg_dropout_rates_match_probabilities():
    dropout = CfgDropout(text=0.1, vit=0.3, vae=0.3)
    sampler = _sampler(TaskMix(t2i=20, vlm=20, edit=20), dropout)
    generator = torch.Generator().manual_seed(0)
    counts = {"text": [0, 0], "vit_image": [0, 0], "vae_image": [0, 0]}
    for _ in range(15):
        for sample in sampler.sample_batch(generator):
            for item in sample.plan:
                if item.enable_cfg:
                    counts[item.type][0] += item.dropped
                    counts[item.type][1] += 1
                else:
                    assert not item.dropped, (sample.task, item.type)
    for item_type, (dropped, total) in counts.items():
        p = dropout.probability(item_type)
        # Within 4 binomial standard deviations of the expected count.
        assert abs(dropped - p * total) < 4 * math.sqrt(total * p * (1 - p)), (item_type, dropped, total)


def test_cfg_dropout_independent_per_item():
    plan = [SequenceItem(type="text", text_ids=[1], enable_cfg=True)] * 2
    generator = torch.Generator().manual_seed(0)
    both = sum(all(i.dropped for i in apply_cfg_dropout(plan, CfgDropout(0.5, 0, 0), generator)) for _ in range(4000))
    assert abs(both / 4000 - 0.25) < 0.03


def test_cfg_dropout_rejects_invalid_probability():
    with pytest.raises(ValueError, match="CfgDropout.vit"):
        CfgDropout(vit=1.5)


def test_caption_exact_match_and_generation_accuracy():
    assert caption_exact_match(["a red circle ", "a red square"], ["a red circle", "a blue square"]) == 0.5
    specs = [ShapeSpec(shape, color, 32, 32, 14, 4, 4) for color in COLOR_NAMES for shape in SHAPES]
    scores = generation_accuracy([s.render() for s in specs], [(s.color, s.shape) for s in specs])
    assert scores == {"color_accuracy": 1.0, "shape_accuracy": 1.0, "class_accuracy": 1.0}
