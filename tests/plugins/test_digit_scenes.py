"""The convergence miniature's scenes: placement, determinism, and the student's subset of the training digits."""

from __future__ import annotations

import torch
from haste_data.digit_scenes import HELDOUT_SCENES, SIDE, DigitScenes, make_scenes, scene_split
from haste_data.digits import load_split


def test_scenes_put_each_digit_somewhere_on_the_canvas_differently_each_draw():
    digits, _ = load_split("train")
    first = make_scenes(digits[:200], torch.Generator().manual_seed(0))
    again = make_scenes(digits[:200], torch.Generator().manual_seed(0))
    other = make_scenes(digits[:200], torch.Generator().manual_seed(1))
    assert first.shape == (200, 1, SIDE, SIDE) and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)
    ink = first.float().sum(dim=(1, 2, 3)) / digits[:200].float().sum(dim=(1, 2, 3))
    assert ink.min() > 0.8  # scaled by 1-1.6 in side: the digit keeps (at least) its ink, nothing is cut off
    rows = torch.arange(SIDE).float()
    centre = (first.float().sum(dim=(1, 3)) * rows).sum(1) / first.float().sum(dim=(1, 3)).sum(1)
    assert centre.std() > 1.0  # placed at different heights


def test_student_scenes_are_a_fixed_subset_and_the_heldout_ones_are_other_digits():
    train, labels = scene_split("train", 512, 0)
    assert train.shape == (512, 1, SIDE, SIDE) and len(labels) == 512
    assert torch.equal(train, DigitScenes(DigitScenes.Config(num_items=512)).images)
    assert not torch.equal(train, scene_split("train", 512, 1)[0])
    heldout, heldout_labels = scene_split("heldout", 0, 0)
    assert heldout.shape[0] == HELDOUT_SCENES and set(heldout_labels.tolist()) == set(range(10))
