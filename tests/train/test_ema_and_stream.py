"""EMA arithmetic and the resumable, rank-split data stream."""

from __future__ import annotations

import torch
from torch import nn

from haste_core.train.ema import EMA
from haste_core.train.stream import DataStream, EpochBatches


def test_ema_update_is_a_lerp_towards_the_model():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    before = ema.model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.model.weight, 0.9 * before + 0.1 * model.weight)
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())


def test_each_global_batch_is_split_over_ranks_without_overlap():
    ranks = [list(EpochBatches(num_items=23, global_batch=6, rank=r, world_size=3, seed=0)) for r in range(3)]
    assert all(len(batches) == 3 for batches in ranks)  # 23 // 6 full batches, the rest dropped
    for b in range(3):
        together = sorted(i for rank in ranks for i in rank[b])
        assert len(together) == len(set(together)) == 6
    seen = {i for rank in ranks for batch in rank for i in batch}
    assert len(seen) == 18


def test_epochs_have_different_orders():
    sampler = EpochBatches(num_items=50, global_batch=10, rank=0, world_size=1, seed=0)
    first = list(sampler)
    sampler.epoch = 1
    assert list(sampler) != first


class Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return {"x": torch.tensor(index)}


def stream():
    return DataStream(
        Numbers(), global_batch=4, rank=0, world_size=1, seed=3, num_workers=0, device=torch.device("cpu")
    )


def test_stream_resumes_exactly_where_it_stopped():
    straight = stream()
    expected = [next(straight)["x"].tolist() for _ in range(7)]  # crosses two epoch boundaries (2 batches each)
    first = stream()
    head = [next(first)["x"].tolist() for _ in range(3)]
    position = first.position()
    assert position == {"epoch": 1, "batch": 1}
    resumed = stream()
    resumed.load_position(position)
    tail = [next(resumed)["x"].tolist() for _ in range(4)]
    assert head + tail == expected


def test_creating_iterators_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    data = stream()
    for _ in range(5):
        next(data)
    assert torch.equal(torch.rand(2), expected)
