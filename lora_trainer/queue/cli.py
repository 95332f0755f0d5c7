"""`python -m lora_trainer queue add|list|cancel|retry|move|pause|run`: the job queue from a terminal.

The queue file is `<output root>/queue.sqlite` (the page's default), or `--db`. `run` runs queued jobs
in this process until none is left; jobs a killed process left running are marked interrupted first.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict

from . import DB_NAME


def add_parser(sub) -> None:
    p = sub.add_parser("queue", help="the persistent job queue: add, list, cancel, retry, move, pause, run")
    p.add_argument("--db", help=f"the queue file (default: OUTPUT_ROOT/{DB_NAME})")
    p.add_argument("--output-root", default="output", help="standalone runs folder (default: output)")
    qs = p.add_subparsers(dest="queue_command", required=True)
    a = qs.add_parser("add", help="add a job: a training config (YAML) or another kind's JSON config")
    a.add_argument("--kind", default="train", help="train, caption, merge, combine, resize or grid")
    a.add_argument("--config", required=True, help="YAML or JSON file with the job's config")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    a.add_argument("--name", default="")
    ls = qs.add_parser("list", help="every job with its state and progress")
    ls.add_argument("--json", action="store_true", help="print JSON")
    for name, text in (("cancel", "cancel a queued job or stop a running one (it saves)"),
                       ("retry", "queue a failed, interrupted or cancelled job again (a training resumes)")):
        c = qs.add_parser(name, help=text)
        c.add_argument("id", type=int)
    m = qs.add_parser("move", help="put a queued job at a place among the queued (0 = next)")
    m.add_argument("id", type=int)
    m.add_argument("index", type=int)
    pz = qs.add_parser("pause", help="pause (or --resume) the queue")
    pz.add_argument("--resume", action="store_true")
    qs.add_parser("run", help="run queued jobs in this process until none is left")
    p.set_defaults(func=cmd_queue)


def _read_config(args: argparse.Namespace) -> Dict[str, Any]:
    import yaml

    from ..config import parse_overrides

    raw = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    raw.update(parse_overrides(args.set or []))
    return raw


def cmd_queue(args: argparse.Namespace) -> int:
    from ..service import StandaloneService
    from . import JobQueue

    service = StandaloneService(args.output_root)
    queue = JobQueue(service, Path(args.db) if args.db else service.queue_path())
    cmd = args.queue_command
    if cmd == "add":
        job = queue.add(args.kind, _read_config(args), args.name)
        print(f"job {job.id} queued: {job.kind} {job.name}")
    elif cmd == "list":
        queue.store.recover()
        jobs = queue.list()
        if args.json:
            print(json.dumps(queue.snapshot(), indent=1))
        for job in [] if args.json else jobs:
            loss = f" loss {job.loss:.4f}" if job.loss is not None else ""
            print(f"{job.id:>4}  {job.state:<11} {job.kind:<8} {job.name}  {job.step}/{job.total}{loss}"
                  + (f"  {job.error.splitlines()[0]}" if job.error else ""))
    elif cmd in ("cancel", "retry"):
        job = getattr(queue, cmd)(args.id)
        print(f"job {job.id}: {job.state}" + (" (stop requested)" if job.stop_requested else ""))
    elif cmd == "move":
        queue.move(args.id, args.index)
    elif cmd == "pause":
        print("paused" if queue.pause(not args.resume) else "running")
    elif cmd == "run":
        ran = queue.runner.run_until_empty()
        failed = [j for j in queue.list() if j.state == "failed"]
        print(f"{ran} job(s) ran" + (f"; failed: {', '.join(str(j.id) for j in failed)}" if failed else ""))
    return 0
