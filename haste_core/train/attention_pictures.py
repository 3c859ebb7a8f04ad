"""Attention pictures: what the alignment does to the student's attention, seen at every sample grid.

For one fixed training image (item 0, noised at a fixed t with fixed noise) and a few query positions (one per
quadrant of the token grid), each attention pair of an alignment with an ``attention_view`` becomes one
picture: rows are the query positions, columns the (mapped) heads, each tile the attention of that query over
the token grid (brightest = most attended, the query's own token outlined in red). While aligned, the teacher's
maps are the left half and the student's the right half; after termination the student's maps stand alone.
Drawn by rank 0 with the live student in eval mode, under a forked RNG so that training draws nothing less.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import default_collate

from haste_core.distributed import to_device
from haste_core.eval.grid import save_png
from haste_core.interfaces import AttentionView, Capture, Dataset, Objective, Student, Teacher

PICTURE_SEED = 0  # the fixed noise and time of the pictures' image
TILE_SIDE = 32  # pixels a tile is enlarged to (at least)
GAP = 8  # pixels between the teacher's half and the student's


def query_positions(grid: int) -> list[int]:
    """One query token per quadrant of a grid×grid token grid (row-major indices), without repeats."""
    rows = sorted({grid // 4, (3 * grid) // 4})
    return [row * grid + col for row in rows for col in rows]


def tiles(probs_HQN: Tensor, grid: int, queries: list[int]) -> Tensor:
    """Attention probabilities H×Q×N as a uint8 3×(Q·tile)×(H·tile) panel: rows queries, columns heads."""
    heads, count, _ = probs_HQN.shape
    scale = max(1, math.ceil(TILE_SIDE / grid))
    side = grid * scale + 1  # one pixel of padding after each tile
    panel = torch.zeros(3, count * side + 1, heads * side + 1, dtype=torch.uint8)
    for row, query in enumerate(queries):
        for head in range(heads):
            attn = probs_HQN[head, row].reshape(grid, grid)
            tile = (attn / attn.max().clamp_min(1e-12) * 255).round().to(torch.uint8)
            tile = tile.repeat_interleave(scale, 0).repeat_interleave(scale, 1).expand(3, -1, -1).clone()
            if scale >= 3:  # outline the query's own token in red
                top, left = (query // grid) * scale, (query % grid) * scale
                cell = tile[:, top : top + scale, left : left + scale]
                for edge in (cell[:, 0], cell[:, -1], cell[:, :, 0], cell[:, :, -1]):
                    edge[0], edge[1], edge[2] = 255, 0, 0
            y, x = 1 + row * side, 1 + head * side
            panel[:, y : y + grid * scale, x : x + grid * scale] = tile
    return panel


def side_by_side(left: Tensor, right: Tensor) -> Tensor:
    """Two panels next to each other, ``GAP`` white pixels apart, top-aligned."""
    height = max(left.shape[1], right.shape[1])
    out = torch.full((3, height, left.shape[2] + GAP + right.shape[2]), 255, dtype=torch.uint8)
    out[:, : left.shape[1], : left.shape[2]] = left
    out[:, : right.shape[1], left.shape[2] + GAP :] = right
    return out


class AttentionPictures:
    """Draws the pictures of the alignments' views; ``teachers`` maps a label to its teacher while aligned."""

    def __init__(self, dataset: Dataset, objective: Objective, grid: int, device: torch.device) -> None:
        self.dataset, self.objective, self.grid, self.device = dataset, objective, grid, device
        self.queries = query_positions(grid)
        self._image: Tensor | None = None  # the fixed image for the teachers (taken while images are loaded)

    @torch.no_grad()
    def draw(
        self, student: Student, views: Mapping[str, AttentionView], teachers: Mapping[str, Teacher]
    ) -> dict[str, Tensor]:
        """``attention/<label>/<pair>`` -> uint8 3×H×W picture, for every pair of every view."""
        if not views:
            return {}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(PICTURE_SEED)
            x_t, t, cond = self._input(need_image=bool(teachers))
            blocks = frozenset(s for view in views.values() for s, _ in view.pairs.values())
            training = student.training
            student.eval()
            try:  # eagerly: a compiled student would compile a graph for this one eval-mode call
                with torch.compiler.set_stance("force_eager"):
                    out = student(x_t, t, cond, capture=Capture(attn=blocks))
            finally:
                student.train(training)
        pictures = {}
        for label, view in views.items():
            teacher_maps = {}
            if label in teachers:
                wanted = frozenset(tb for _, tb in view.pairs.values())
                teacher_maps = teachers[label].encode(self._image, frozenset(), wanted).attn_logits
            for name, (student_block, teacher_block) in view.pairs.items():
                if out.attn_logits[student_block].shape[-1] != self.grid**2:
                    continue  # keys beyond the image tokens (text): no picture on the grid
                logits = view.map_heads(name, out.attn_logits[student_block][:, :, self.queries])
                panel = tiles(logits[0].float().softmax(-1).cpu(), self.grid, self.queries)
                if teacher_block in teacher_maps:
                    teacher = teacher_maps[teacher_block][:, :, self.queries][0].float().softmax(-1).cpu()
                    panel = side_by_side(tiles(teacher, self.grid, self.queries), panel)
                pictures[f"attention/{label}/{name}"] = panel
        return pictures

    def _input(self, need_image: bool) -> tuple[Tensor, Tensor, object]:
        """Item 0 of the data set, noised the same way every time; its image kept for later teachers."""
        batch = to_device(default_collate([self.dataset[0]]), self.device)
        image = batch.pop("image", None)
        if need_image and self._image is None:
            self._image = image
        batch = self.dataset.finish_batch(batch)
        pair = self.objective.training_pair(batch["x"])
        return pair.x_t, pair.t, batch["cond"]


def save(pictures: Mapping[str, Tensor], run_dir: Path, step: int) -> None:
    """Each picture as ``<run>/attention/step_<8 digits>/<label>_<pair>.png``."""
    for tag, picture in pictures.items():
        name = tag.removeprefix("attention/").replace("/", "_")
        save_png(picture, run_dir / "attention" / f"step_{step:08d}" / f"{name}.png")
