"""Corrupt prepared data: out-of-range labels, empty or truncated shards, manifests that are not what they say;
each fails with the file, the item and what to do (never a raw traceback, never silent training)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from haste_data.latents import Latents

from haste_core.data.prepared import write_example
from haste_core.errors import HasteError

RES = 16


@pytest.fixture
def folder(tmp_path):
    return write_example(tmp_path / "in16", num_items=6, resolution=RES, num_classes=3)


def latents(folder) -> Latents:
    return Latents(Latents.Config(path=str(folder), resolution=RES, preview="channels"))


@pytest.mark.parametrize("label", [3, -1, 1000])
def test_a_label_out_of_range_names_the_file_the_item_and_the_range(folder, label):
    labels = np.arange(6) % 3
    labels[4] = label  # 3 == num_classes: the null class of classifier-free guidance
    np.save(folder / "labels" / "00000.npy", labels.astype(np.int64))
    message = re.escape(
        f"{folder / 'labels' / '00000.npy'}: item 4 (row 4 of that file) has label {label}, and 1 label(s) there are "
        f"out of range; valid labels are 0..2 ({folder / 'manifest.json'} says num_classes 3)"
    )
    with pytest.raises(HasteError, match=message):
        latents(folder)


def test_labels_in_range_load(folder):
    assert [int(latents(folder)[i]["cond"]) for i in range(6)] == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize(
    ("manifest", "message"),
    [(["a", "list"], "holds a list, not a manifest"), ("drop:latent_shape", "lacks latent_shape")],
)
def test_a_manifest_that_is_a_list_or_lacks_keys(folder, manifest, message):
    path = folder / "manifest.json"
    if manifest == "drop:latent_shape":
        manifest = {k: v for k, v in json.loads(path.read_text()).items() if k != "latent_shape"}
    path.write_text(json.dumps(manifest))
    with pytest.raises(HasteError, match=re.escape(f"{path} {message}")):
        Latents.describe(Latents.Config(path=str(folder), resolution=RES))
