"""`python -m lora_trainer train`: a progress bar, Ctrl-C / SIGTERM as "stop and save", and `--nproc N`, which
runs the same command data-parallel under torchrun (engine/distributed)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any, Optional

from .errors import LoraTrainerError
from .events import Callback, CheckpointSaved, Message, RunStarted, StepEnded

if TYPE_CHECKING:
    from .config import TrainConfig


class TerminalProgress(Callback):
    """A tqdm progress bar with step, loss, it/s and ETA; messages above it."""

    def __init__(self) -> None:
        self.bar = None
        self.last_loss: Optional[float] = None

    def on_event(self, event: Any) -> None:
        from tqdm import tqdm

        if isinstance(event, RunStarted):
            self.bar = tqdm(total=event.total_steps, initial=event.start_step, unit="step", dynamic_ncols=True)
        elif isinstance(event, StepEnded) and self.bar is not None:
            if event.loss is not None:
                self.last_loss = event.loss
            self.bar.set_postfix(epoch=event.epoch, loss=f"{self.last_loss:.4f}" if self.last_loss is not None else "-",
                                 lr=f"{event.lr:.2e}", refresh=False)
            self.bar.update(event.step - self.bar.n)
        elif isinstance(event, CheckpointSaved):
            self._write(f"saved {event.path}")
        elif isinstance(event, Message) and event.level >= logging.INFO:
            self._write(event.text if event.level < logging.WARNING else f"warning: {event.text}")

    def _write(self, text: str) -> None:
        from tqdm import tqdm

        if self.bar is not None:
            tqdm.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopOnSignal(Callback):
    """Ctrl-C / SIGTERM: finish the current step, save the LoRA and the state, exit 0. A second one quits at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.uninstall()
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step and saving (press Ctrl-C again to quit at once)", file=sys.stderr,
              flush=True)

    def should_stop(self) -> bool:
        return self.requested


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
