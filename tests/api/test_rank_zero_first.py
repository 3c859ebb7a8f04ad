"""``rank_zero_first`` waits for local rank 0's once-per-machine work (a download, a teacher trained once) longer
than the training collectives' timeout allows: a slow cache fill is not a stalled rank."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import torch
import torch.multiprocessing as mp

from haste_core import distributed

COLLECTIVE_TIMEOUT = timedelta(seconds=2)
FILL_SECONDS = 5.0  # rank 0's cache fill: longer than the collectives' timeout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, results: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    distributed.setup("cpu", COLLECTIVE_TIMEOUT)
    try:
        started = time.monotonic()
        with distributed.rank_zero_first():
            if rank == 0:
                time.sleep(FILL_SECONDS)
        waited = time.monotonic() - started
        total = distributed.all_reduce_mean(torch.tensor(float(rank)))  # training collectives still work
        results[rank] = (waited, float(total))
    finally:
        distributed.shutdown()


def test_the_other_ranks_wait_out_a_cache_fill_longer_than_the_collective_timeout():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
        results = dict(results)
    assert results[1][0] >= FILL_SECONDS - 0.5  # rank 1 really waited for rank 0's fill, beyond the 2 s timeout
    assert [value for _, value in results.values()] == [0.5, 0.5]
