"""The persistent job queue (issue 24): jobs from concurrent HTTP clients recorded once and in order;
run one at a time in order, a bad job failing alone; cancel, reorder, stop; a queue process killed
with SIGKILL leaves its job interrupted, and resuming it gives the LoRA of an uninterrupted run."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_trainer.queue import JobQueue, JobStore, QueueError
from lora_trainer.service import StandaloneService

from conftest import make_config

ROOT = Path(__file__).resolve().parent.parent


def _train_raw(model, data, out, **over):
    return make_config(model, data, out, **over).to_dict()


def _queue(tmp_path) -> JobQueue:
    service = StandaloneService(str(tmp_path / "runs"))
    return service.job_queue()


# ---------------------------------------------------------------------------- the store alone
def test_store_orders_cancels_moves_retries_and_pauses(tmp_path):
    store = JobStore(tmp_path / "q.sqlite")
    a, b, c = (store.add("combine", {"n": i}, f"job{i}") for i in range(3))
    assert [j.name for j in store.list()] == ["job0", "job1", "job2"]
    store.move(c.id, 0)
    store.move(a.id, 5)  # past the end: last
    assert [j.name for j in store.list() if j.state == "queued"] == ["job2", "job1", "job0"]
    assert store.cancel(b.id).state == "cancelled"
    with pytest.raises(QueueError, match="only a queued or running job"):
        store.cancel(b.id)
    store.set_paused(True)
    assert store.claim_next() is None
    store.set_paused(False)
    first = store.claim_next()
    assert first.id == c.id and first.state == "running" and first.owner_pid == os.getpid()
    assert store.claim_next() is None  # one at a time
    assert store.cancel(c.id).stop_requested
    store.finish(c.id, "failed", error="boom")
    again = store.retry(c.id)
    assert again.state == "queued" and not again.resume and again.error is None
    assert [j.id for j in store.list() if j.state == "queued"] == [a.id, c.id]


def test_a_job_left_running_by_a_dead_process_becomes_interrupted_and_resumes(tmp_path):
    store = JobStore(tmp_path / "q.sqlite")
    job = store.add("train", {"output_dir": str(tmp_path)}, "t")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.claim_next()
    with store._tx() as db:  # as if another process (now gone) had claimed it
        db.execute("UPDATE jobs SET owner_pid = ? WHERE id = ?", (dead.pid, job.id))
    assert [j.id for j in store.recover()] == [job.id]
    assert store.get(job.id).state == "interrupted"
    assert store.retry(job.id).resume
    live = store.claim_next()
    assert live.id == job.id and store.recover() == []  # a live owner keeps its job


# ---------------------------------------------------------------------------- HTTP
def test_50_jobs_from_10_concurrent_http_clients_are_recorded_once_in_order(tmp_path, tiny_model_dir, color_data):
    httpx = pytest.importorskip("httpx")
    from fastapi import FastAPI

    from lora_trainer.hosts.a1111.api import register_routes
    from lora_trainer.hosts.standalone import StandaloneHost

    app = FastAPI()
    service = StandaloneService(str(tmp_path / "runs"))
    service.job_queue().pause()  # record only: no job runs while the clients post
    register_routes(app, service, StandaloneHost())

    async def client(n: int):
        ids = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://page") as c:
            for k in range(5):
                raw = _train_raw(tiny_model_dir, color_data, tmp_path / f"c{n}_{k}", output_name=f"c{n}_{k}")
                r = await c.post("/lora_trainer/v1/jobs", json={"kind": "train", "config": raw})
                assert r.status_code == 200, r.text
                ids.append(r.json()["id"])
            return ids

    async def everyone():
        return await asyncio.gather(*(client(n) for n in range(10)))

    sent = asyncio.run(everyone())
    listed = service.job_queue().snapshot()
    assert listed["paused"]
    jobs = listed["jobs"]
    assert len(jobs) == 50 and len({j["id"] for j in jobs}) == 50
    assert sorted(j["name"] for j in jobs) == sorted(f"c{n}_{k}" for n in range(10) for k in range(5))
    by_id = {j["id"]: j for j in jobs}
    for n, ids in enumerate(sent):
        assert [by_id[i]["name"] for i in ids] == [f"c{n}_{k}" for k in range(5)]
        order = [jobs.index(by_id[i]) for i in ids]
        assert order == sorted(order)  # each client's jobs run in the order it sent them
    assert all(j["state"] == "queued" and j["config"]["base_model"] == str(tiny_model_dir) for j in jobs)

    async def more():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://page") as c:
            raw = {**_train_raw(tiny_model_dir, color_data, tmp_path / "x"), "lora_rank": "x"}
            bad = await c.post("/lora_trainer/v1/jobs", json={"kind": "train", "config": raw})
            gone = await c.get("/lora_trainer/v1/jobs/999")
            cancel = await c.post(f"/lora_trainer/v1/jobs/{sent[0][0]}/cancel")
            move = await c.post(f"/lora_trainer/v1/jobs/{sent[9][4]}/move", json={"index": 0})
            return bad, gone, cancel, move

    bad, gone, cancel, move = asyncio.run(more())
    assert bad.status_code == 400 and "lora_rank" in bad.json()["detail"]
    assert gone.status_code == 400 and "no job 999" in gone.json()["detail"]
    assert cancel.json()["state"] == "cancelled"
    queued = [j for j in service.job_queue().list() if j.state == "queued"]
    assert queued[0].id == move.json()["id"] == sent[9][4] and len(queued) == 49


def _http(app):
    """A blocking `call(method, path, json=None)` on the app's routes (an ASGI client, no server)."""
    httpx = pytest.importorskip("httpx")

    def call(method: str, path: str, json=None):
        async def go():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://page") as c:
                return await c.request(method, f"/lora_trainer/v1/{path}", json=json)
        return asyncio.run(go())
    return call


def _until(check, what: str, timeout: float = 120):
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_train_route_is_a_queue_job_and_a_second_start_is_refused(tmp_path, tiny_model_dir, color_data):
    """/train (the tab's Start) runs at once as a job of the queue: GET /jobs lists it with live progress;
    a second /train says 'already running' (a job added to the queue waits behind it instead); Stop saves
    it and it is recorded cancelled; the queued one then runs and the Run status shows it."""
    from fastapi import FastAPI

    from lora_trainer.hosts.a1111.api import register_routes
    from lora_trainer.hosts.standalone import StandaloneHost

    app = FastAPI()
    service = StandaloneService(str(tmp_path / "runs"))
    register_routes(app, service, StandaloneHost())
    call = _http(app)
    first = _train_raw(tiny_model_dir, color_data, tmp_path / "first", output_name="first", max_steps=500,
                       batch_size=1)
    started = call("POST", "train", first)
    assert started.status_code == 200 and started.json()["state"] == "running"
    [job] = call("GET", "jobs").json()["jobs"]
    assert (job["kind"], job["name"], job["state"]) == ("train", "first", "running")
    _until(lambda: call("GET", f"jobs/{job['id']}").json()["step"] >= 2, "the started job's progress in /jobs")
    second = _train_raw(tiny_model_dir, color_data, tmp_path / "second", output_name="second", max_steps=2,
                        batch_size=1)
    again = call("POST", "train", second)
    assert again.status_code == 400 and "already running" in again.json()["detail"], again.text
    queued = call("POST", "jobs", {"kind": "train", "config": second}).json()
    time.sleep(1)  # the runner looks twice a second: it must not start the second job beside the first
    assert call("GET", f"jobs/{queued['id']}").json()["state"] == "queued"
    call("POST", "stop")
    _until(lambda: call("GET", f"jobs/{job['id']}").json()["state"] != "running", "the first job stops")
    _until(lambda: call("GET", f"jobs/{queued['id']}").json()["state"] == "done", "the queued job runs")
    stopped, done = (call("GET", f"jobs/{i}").json() for i in (job["id"], queued["id"]))
    assert stopped["state"] == "cancelled" and 2 <= stopped["step"] < 500 and Path(stopped["result"]["lora_path"]).is_file()
    assert done["step"] == done["total"] == 2 and load_file(done["result"]["lora_path"])
    status = call("GET", "status").json()  # the Run section shows a queued training as it shows Start's
    assert (status["name"], status["state"], status["step"]) == ("second", "finished", 2)
    service.job_queue().runner.close(60)


def test_start_is_refused_while_another_kind_of_queue_job_runs(tmp_path, tiny_model_dir, color_data):
    service = StandaloneService(str(tmp_path / "runs"))
    store = service.job_queue().store
    merge = store.add("merge", {"lora": "x.safetensors"}, "merging")
    store.claim_next()  # as the runner does: the merge job is running
    with pytest.raises(QueueError, match=f"queue job {merge.id} \\(merge merging\\) is running"):
        service.start(make_config(tiny_model_dir, color_data, tmp_path / "o", max_steps=2))
    assert [j.kind for j in store.list()] == ["merge"]  # nothing recorded for the refused start
    assert not service.status().active


# ---------------------------------------------------------------------------- running
def test_jobs_run_in_order_and_a_bad_one_fails_alone(tmp_path, tiny_model_dir, color_data):
    queue = _queue(tmp_path)
    small = dict(max_steps=2, batch_size=1)
    bad = queue.add("train", _train_raw(tiny_model_dir, tmp_path / "no_such_data", tmp_path / "bad", **small))
    a = queue.add("train", _train_raw(tiny_model_dir, color_data, tmp_path / "a", output_name="a", **small))
    b = queue.add("train", _train_raw(tiny_model_dir, color_data, tmp_path / "b", output_name="b", **small))
    c = queue.add("train", _train_raw(tiny_model_dir, color_data, tmp_path / "c", output_name="c", **small))
    queue.move(b.id, 0)
    queue.cancel(c.id)
    assert queue.runner.run_until_empty() == 3
    jobs = {j.id: j for j in queue.list()}
    assert jobs[bad.id].state == "failed" and "no_such_data" in jobs[bad.id].error
    assert "Traceback" not in jobs[bad.id].error
    assert jobs[a.id].state == jobs[b.id].state == "done"
    assert jobs[b.id].started_at < jobs[bad.id].started_at < jobs[a.id].started_at
    assert jobs[c.id].state == "cancelled" and jobs[c.id].started_at is None and not (tmp_path / "c").exists()
    for job in (jobs[a.id], jobs[b.id]):
        assert job.step == job.total == 2 and job.loss is not None
        assert load_file(job.result["lora_path"])  # a LoRA file another loader reads
    assert Path(jobs[a.id].result["lora_path"]).name == "a.safetensors"


def test_the_prompt_assistants_text_training_is_a_queue_job(tmp_path):
    """The page's "Train the assistant" runs as a queue job of kind text (listed, progress recorded); a text
    job added to the queue runs through the same trainer; a bad text config is refused when it is added."""
    from lora_trainer.errors import ConfigError
    from lora_trainer.text.assistant import assistant_config, write_training_data
    from lora_trainer.text.run import train_text

    from text_models import build_tiny_gpt2

    prompts = [f"masterpiece, a {c} {a}, oil painting" for c in ("red", "blue", "green") for a in ("fox", "owl")]
    folder = tmp_path / "assistant"
    write_training_data(prompts, folder)
    model = build_tiny_gpt2(tmp_path / "gpt2", corpus=prompts)
    queue = _queue(tmp_path)
    config = assistant_config(str(model), folder, steps=3, device="cpu")
    queue.run_now(config, kind="text", train_fn=train_text)
    assert queue.service.jobs.wait(120).state == "finished"
    _until(lambda: queue.list()[0].state == "done", "the assistant's job recorded as done")
    [job] = queue.list()
    assert (job.kind, job.step, job.total) == ("text", 3, 3) and job.loss is not None
    assert (folder / "adapter_model.safetensors").is_file()
    queued = queue.add("text", {**config.to_dict(), "max_steps": 2})
    assert queue.runner.run_until_empty() == 1
    done = queue.get(queued.id)
    assert (done.kind, done.state, done.step) == ("text", "done", 2), done.error
    with pytest.raises(ConfigError, match="max_steps"):
        queue.add("text", {**config.to_dict(), "max_steps": "many"})


def test_stopping_the_running_job_saves_it(tmp_path, tiny_model_dir, color_data):
    queue = _queue(tmp_path)
    job = queue.add("train", _train_raw(tiny_model_dir, color_data, tmp_path / "long", output_name="long",
                                        max_steps=500, batch_size=1))
    queue.start()
    try:
        deadline = time.time() + 120
        while queue.get(job.id).step < 2:
            assert time.time() < deadline, queue.get(job.id)
            time.sleep(0.05)
        queue.cancel(job.id)
        while queue.get(job.id).state == "running":
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        queue.runner.close(60)
    done = queue.get(job.id)
    assert done.state == "cancelled" and 2 <= done.step < 500
    assert Path(done.result["lora_path"]).is_file()


# ---------------------------------------------------------------------------- a crash
def _queue_cli(db: Path, *args: str, wait: bool = True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lora_trainer", "queue", "--db", str(db), *args]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def test_sigkill_while_a_job_runs_then_restart_resumes_it_bit_identically(tmp_path, tiny_model_dir, color_data):
    import yaml

    common = dict(max_steps=8, save_steps=2, output_name="run")
    reference = _queue(tmp_path / "ref")
    reference.add("train", _train_raw(tiny_model_dir, color_data, tmp_path / "full", **common))
    assert reference.runner.run_until_empty() == 1

    db = tmp_path / "queue.sqlite"
    cfg = tmp_path / "cut.yaml"
    cfg.write_text(yaml.safe_dump(_train_raw(tiny_model_dir, color_data, tmp_path / "cut", **common)))
    _queue_cli(db, "add", "--config", str(cfg))  # the CLI's add; list and retry below as a restarted page does
    proc = _queue_cli(db, "run", wait=False)
    state = tmp_path / "cut" / "state" / "training_state.pt"
    store = JobStore(db)
    deadline = time.time() + 300
    while not state.exists() or store.get(1).step == 0:  # a saved state, and progress recorded (every 0.25 s)
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "run.safetensors").exists()

    restarted = JobQueue(StandaloneService(str(tmp_path / "runs")), db).start()  # recovers, then runs jobs
    restarted.runner.close()
    jobs = restarted.snapshot()["jobs"]
    assert [j["state"] for j in jobs] == ["interrupted"] and 0 < jobs[0]["step"] < 8
    assert restarted.retry(1).resume
    out = _queue_cli(db, "run")
    assert "1 job(s) ran" in out and "failed" not in out
    job = JobStore(db).get(1)
    assert job.state == "done" and job.step == 8
    a, b = load_file(str(tmp_path / "full" / "run.safetensors")), load_file(str(tmp_path / "cut" / "run.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
