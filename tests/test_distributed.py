"""Data-parallel training under torchrun on CPU (gloo): N processes at batch_size B train the same LoRA as one
process at batch_size N*B, only rank 0 writes, two "nodes" meet through c10d rendezvous, and a killed rank
stops the others quickly with a message while the saved files stay usable for resume."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from lora_trainer.engine.distributed import Distributed
from lora_trainer.engine.output_folder import FolderBusy, check_not_locked
from lora_trainer.engine.run import LoraRun, train
from lora_trainer.events import Message

from conftest import make_config
from dist_workers import stuck_peer
from recording import EventRecorder
from tiny_data import make_color_dataset

ROOT = Path(__file__).resolve().parent.parent
# five images in one bucket: global batches of 2, 2 and 1, so one rank sometimes has nothing to do
DDP = dict(batch_size=1, max_steps=4, save_steps=2, flip_aug=True, output_name="ddp", num_workers=0)


@pytest.fixture
def five_images(tmp_path) -> Path:
    return make_color_dataset(tmp_path / "data", n=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_file(path: Path, model, data, out, **over) -> Path:
    path.write_text(yaml.safe_dump(make_config(model, data, out, **{**DDP, **over}).to_dict()))
    return path


def _launch(cmd: List[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LORA_TRAINER_DIST_TIMEOUT": "20"}
    return subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _torchrun(launcher_args: List[str], config: Path, *extra: str) -> subprocess.Popen:
    return _launch([sys.executable, "-m", "torch.distributed.run", *launcher_args, "-m", "lora_trainer", "train",
                    "--config", str(config), *extra])


def _finish(proc: subprocess.Popen, timeout: float = 240):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout} s:\n{out}")
    return proc.returncode, out


def _files(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "logs" not in p.parts)


def test_shards_partition_every_global_batch():
    for world in (1, 2, 3, 4):
        for n in range(0, 9):
            parts = [Distributed(r, world).shard(n) for r in range(world)]
            assert [i for s in parts for i in range(n)[s]] == list(range(n))


def test_two_processes_train_the_lora_of_one_process_with_twice_the_batch(tmp_path, tiny_model_dir, five_images):
    """The reference is one process at batch_size 2 that computes each batch as micro-batches of 1 on one
    thread: the same sums in the same order as two ranks, so only equal maths passes. (A full batch-2 forward
    sums in another order; AdamW's eps turns that rounding in near-zero gradients into ~1e-4 differences, as
    much as changing the thread count of one process does.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (OMP_NUM_THREADS=1)
    try:
        run = LoraRun(make_config(tiny_model_dir, five_images, tmp_path / "one", **{**DDP, "batch_size": 2}))
        run.setup()
        run.trainer.micro_batch_size = 1
        run.train()
        single = run.save_final()
        run.close()
    finally:
        torch.set_num_threads(threads)
    config = _config_file(tmp_path / "ddp.yaml", tiny_model_dir, five_images, tmp_path / "two")
    code, out = _finish(_launch([sys.executable, "-m", "lora_trainer", "train", "--config", str(config),
                                 "--nproc", "2"]))  # the convenience: it runs torchrun --standalone
    assert code == 0, out
    assert "running: torchrun --standalone --nproc_per_node=2" in out and "global batch 2" in out

    a, b = load_file(str(single)), load_file(str(tmp_path / "two" / "ddp.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(b[key], a[key], rtol=1e-5, atol=0), key
    trained = load_file(str(tmp_path / "two" / "ddp-step00000002.safetensors"))
    assert any(not torch.equal(trained[k], b[k]) for k in b)  # it trained on between the two saves
    # one set of files, the same as the single process wrote (one writer: no rank-suffixed copies)
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    state = torch.load(str(tmp_path / "two" / "state" / "training_state.pt"), weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 4
    assert len(list((tmp_path / "two" / "logs").iterdir())) == 1  # one TensorBoard event file
    with safe_open(str(tmp_path / "two" / "ddp.safetensors"), "pt") as f:
        assert f.metadata()["ss_total_batch_size"] == "2"


def test_two_nodes_meet_through_c10d_rendezvous_and_save_one_file(tmp_path, tiny_model_dir, five_images):
    config = _config_file(tmp_path / "nodes.yaml", tiny_model_dir, five_images, tmp_path / "out", max_steps=3,
                          save_steps=0)
    rdzv = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
            "--rdzv-id=lora-trainer-test"]
    nodes = [_torchrun(rdzv, config) for _ in range(2)]
    results = [_finish(node) for node in nodes]
    for code, out in results:
        assert code == 0, out
    assert sum("LoRA written to" in out for _, out in results) == 1  # rank 0 reports, rank 1 stays quiet
    assert _files(tmp_path / "out") == [".lora_trainer.lock", "config.yaml", "ddp.json", "ddp.safetensors",
                                        "state/training_state.pt"]
    assert load_file(str(tmp_path / "out" / "ddp.safetensors"))


def _rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of a torchrun worker by its RANK (read from /proc: Linux)."""
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                return int(child)
    raise AssertionError(f"no worker with RANK={rank} under {launcher_pid}")


def test_a_killed_rank_stops_the_other_quickly_and_resume_works(tmp_path, tiny_model_dir, five_images):
    config = _config_file(tmp_path / "kill.yaml", tiny_model_dir, five_images, tmp_path / "out", max_steps=500,
                          save_steps=3)
    state_file = tmp_path / "out" / "state" / "training_state.pt"
    proc = _torchrun(["--standalone", "--nproc_per_node=2"], config)
    deadline = time.time() + 180
    while not state_file.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    # rank 0 alone owns the folder: a third run is refused naming it (rank 1 neither locked nor was refused)
    with pytest.raises(FolderBusy, match=f"pid {_rank_pid(proc.pid, 0)}"):
        check_not_locked(tmp_path / "out")
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    killed = time.time()
    code, out = _finish(proc, timeout=90)
    assert time.time() - killed < 60
    assert code != 0
    message = [line for line in out.splitlines() if line.startswith("error: rank 0 of 2 lost the other ranks")]
    assert message and message[0].endswith("--set resume=true --nproc 2"), out  # how to go on, as many ranks
    assert "lora_trainer/engine" not in out  # one line from our rank, no traceback (torchrun adds its own)

    # what was saved is whole: the state and the checkpoint of the same step load
    state = torch.load(str(state_file), weights_only=True)
    step = state["step"]
    saved = load_file(str(tmp_path / "out" / f"ddp-step{step:08d}.safetensors"))
    assert saved.keys() == state["lora"].keys()
    assert not (tmp_path / "out" / "ddp.safetensors").exists()
    code, out = _finish(_torchrun(["--standalone", "--nproc_per_node=2"], config, "--set", "resume=true",
                                  "--set", f"max_steps={step + 2}"))
    assert code == 0, out
    assert f"resuming at step {step}" in out
    final = torch.load(str(state_file), weights_only=True)
    assert final["step"] == step + 2
    assert (tmp_path / "out" / "ddp.safetensors").exists()

    # one process can continue what two saved: it says that the global batch, and so the run, changed
    said = EventRecorder()
    train(make_config(tiny_model_dir, five_images, tmp_path / "out", **{**DDP, "max_steps": step + 3,
                                                                        "resume": True}), [said])
    warnings = [m.text for m in said.of_type(Message) if m.level == logging.WARNING]
    assert any("saved by 2 process(es) and this run has 1" in w for w in warnings), warnings


def test_ctrl_c_stops_every_rank_after_the_same_step_and_saves(tmp_path, tiny_model_dir, five_images):
    """Ctrl-C in the terminal reaches `train --nproc 2` (torchrun's agent, whose workers run in their own
    sessions); the agent passes it to each rank once: they agree on the step, rank 0 saves, all exit."""
    config = _config_file(tmp_path / "stop.yaml", tiny_model_dir, five_images, tmp_path / "out", max_steps=500,
                          save_steps=3)
    state_file = tmp_path / "out" / "state" / "training_state.pt"
    proc = _launch([sys.executable, "-m", "lora_trainer", "train", "--config", str(config), "--nproc", "2"])
    deadline = time.time() + 180
    while not state_file.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the foreground process group
    stopped = time.time()
    code, out = _finish(proc, timeout=90)
    assert time.time() - stopped < 30, out  # before torchrun's shutdown timeout would SIGKILL the ranks
    assert code == 130 and "the ranks were asked to stop after the same step and save" in out, out
    assert "LoRA written to" in out and "--nproc 2" in out.split("continue with:")[-1], out
    state = torch.load(str(state_file), weights_only=True)
    with safe_open(str(tmp_path / "out" / "ddp.safetensors"), "pt") as f:
        assert int(f.metadata()["ss_steps"]) == state["step"] < 500  # the final LoRA and its state agree
    assert "Traceback" not in out


def test_a_hung_rank_times_out_with_a_message_instead_of_hanging():
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    results, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=stuck_peer, args=(rank, port, results), daemon=True) for rank in (0, 1)]
    for p in procs:
        p.start()
    message, seconds = results.get(timeout=60)
    for p in procs:
        p.kill()
    assert message.startswith("rank 0 of 2 lost the other ranks while summing gradients"), message
    assert 2.5 < seconds < 15
