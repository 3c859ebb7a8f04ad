"""A local plugin (listed under a recipe's `plugins:`): a tiny synthetic caption/image data set for MMDiT tests.

Item i shows a bright bar (row or column ``i % 8`` of an 8×8 image, horizontal for even ``i // 8``); its
caption is 2 to 4 "word" embeddings (fixed random vectors for the position and the orientation, padded to
``TEXT_LEN`` with a mask) and a pooled vector (the mean of its words).
"""

from dataclasses import dataclass

import torch

from haste_core import hookimpl
from haste_core.interfaces import Dataset, DataSpec

SIDE, TEXT_LEN, TEXT_DIM, NUM_ITEMS = 8, 4, 8, 32


def caption(index: int) -> dict:
    words = torch.randn(SIDE + 2, TEXT_DIM, generator=torch.Generator().manual_seed(0))  # a fixed vocabulary
    position, orientation = words[index % SIDE], words[SIDE + (index // SIDE) % 2]
    text = torch.stack([position, orientation, position, orientation])  # "row 3 horizontal row 3 horizontal"
    mask = torch.arange(TEXT_LEN) < 2 + index % 3  # 2, 3 or 4 real tokens; the rest are padding
    return {"text": text, "text_mask": mask, "pooled": text[:2].mean(0)}


class TextPairs(Dataset):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        pass

    @classmethod
    def describe(cls, config):
        return DataSpec(
            x_shape=(1, SIDE, SIDE), image_shape=(1, SIDE, SIDE), num_classes=0, num_items=NUM_ITEMS,
            text_len=TEXT_LEN, text_dim=TEXT_DIM, pooled_dim=TEXT_DIM,
        )  # fmt: skip

    def __init__(self, config, *, split="train"):
        self.config = config

    @property
    def spec(self):
        return self.describe(self.config)

    def __len__(self):
        return NUM_ITEMS

    def __getitem__(self, index):
        image = torch.zeros(1, SIDE, SIDE, dtype=torch.uint8)
        if (index // SIDE) % 2 == 0:
            image[:, index % SIDE, :] = 255
        else:
            image[:, :, index % SIDE] = 255
        return {"image": image, "x": image.float() / 127.5 - 1, "cond": caption(index)}

    def to_images(self, x):
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    def sample_conds(self, n):
        captions = [caption(i) for i in range(n)]
        return {key: torch.stack([c[key] for c in captions]) for key in captions[0]}


@hookimpl
def haste_register_datasets(registry):
    registry.add("text_pairs", TextPairs)
