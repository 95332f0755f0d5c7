"""`python -m lora_trainer train`: a progress bar, Ctrl-C / SIGTERM as "stop and save", and `--nproc N`, which
runs the same command data-parallel under torchrun (engine/distributed). The bar and the signal handling are
terminal.py's, shared with the text commands (text/cli.py)."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .errors import LoraTrainerError
from .events import Callback
from .terminal import StopOnSignal, TerminalProgress

if TYPE_CHECKING:
    from .config import TrainConfig


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config, parse_overrides
    from .engine import distributed
    from .engine.run import resume_command, train

    overrides = parse_overrides(args.set or [])
    if args.overwrite:
        overrides["overwrite"] = True
    config = load_config(args.config, overrides)  # a bad config stops here, before any rank
    if args.nproc and args.nproc > 1 and not distributed.launched_by_torchrun():
        return _relaunch_with_torchrun(args, config)
    with distributed.session(config.device) as dist:
        progress, stopper = TerminalProgress() if dist.is_main else Callback(), StopOnSignal()
        stopper.install()
        try:
            result = train(config, [progress, stopper], dist=dist)
        finally:
            stopper.uninstall()
            if isinstance(progress, TerminalProgress):
                progress.close()
    if not dist.is_main:
        return 0
    name = result.lora_path.stem
    print(f"LoRA written to {result.lora_path}")
    if result.stopped_early:
        command = resume_command(result.output_dir, dist.world_size, dist.several_machines)
        print(f"stopped at step {result.steps}; continue with: {command}")
    print(f"use it with <lora:{name}:{config.preferred_weight:g}>")
    return 0


def _relaunch_with_torchrun(args: argparse.Namespace, config: TrainConfig) -> int:
    """`train --nproc N`: the same command under torchrun on this machine (N processes, one per GPU), after
    the checks before loading (a bad input is one message here, not one per rank)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    from .engine.preflight import preflight

    preflight(config)
    argv = ["--standalone", f"--nproc_per_node={args.nproc}", "-m", "lora_trainer"]
    argv += (["--verbose"] if args.verbose else []) + ["train", "--config", args.config]
    for item in args.set or []:
        argv += ["--set", item]
    argv += ["--overwrite"] if args.overwrite else []
    print("running: torchrun " + " ".join(argv), flush=True)
    try:
        torchrun(argv)
    except SignalException as exc:  # Ctrl-C reaches this process only; torchrun passes it on to every rank
        print(f"torchrun: {exc.sigval.name}: the ranks were asked to stop after the same step and save; their "
              f"messages above say what was saved", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - torchrun reports a failed rank by raising ChildFailedError
        raise LoraTrainerError(f"{args.nproc}-process training failed (see the ranks' messages above): "
                               f"{type(exc).__name__}") from None
    return 0
