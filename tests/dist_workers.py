"""Worker functions for tests/test_distributed.py's spawned processes (a light module: a child imports it)."""
from __future__ import annotations

import os
import time

import torch


def stuck_peer(rank: int, port: int, results) -> None:
    """Rank 1 joins and then never takes part again (a hung rank); rank 0 tries to step."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LORA_TRAINER_DIST_TIMEOUT="3")
    from lora_trainer.engine.distributed import start
    from lora_trainer.errors import TrainingStopped

    dist = start(torch.device("cpu"))
    if rank == 1:
        time.sleep(15)
        return
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    began = time.time()
    try:
        dist.sum_gradients([param], torch.zeros(()))
        results.put(("no error", time.time() - began))
    except TrainingStopped as exc:
        results.put((str(exc), time.time() - began))
