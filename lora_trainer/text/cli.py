"""`train`, `check`, `plan` and `keys` for text configs (`task: text`); lora_trainer/cli.py routes here
(text/task.py decides). Same behaviour as the image commands: one-line errors, a progress bar with ETA,
Ctrl-C finishes the step and saves, exit 1 when `check` or `plan` says it cannot train."""
from __future__ import annotations

import argparse

from ..config import parse_overrides
from ..errors import ConfigError
from ..terminal import StopOnSignal, TerminalProgress
from .config import describe_text_keys, load_text_config


def cmd_train(args: argparse.Namespace) -> int:
    from .run import train_text

    if getattr(args, "nproc", 0) and args.nproc > 1:
        raise ConfigError(f"config error: --nproc {args.nproc}: text-model training runs in one process; "
                          "drop --nproc (data-parallel training is for image configs)")
    overrides = parse_overrides(args.set or [])
    if getattr(args, "overwrite", False):
        overrides["overwrite"] = True
    config = load_text_config(args.config, overrides)
    progress, stopper = TerminalProgress(), StopOnSignal()
    stopper.install()
    try:
        result = train_text(config, [progress, stopper])
    finally:
        stopper.uninstall()
        progress.close()
    print(f"adapter written to {result.adapter_dir} (load it with peft: PeftModel.from_pretrained(base_model, "
          f"{str(result.adapter_dir)!r}))")
    if result.merged_dir:
        print(f"merged model written to {result.merged_dir}")
    if result.stopped_early:
        print(f"stopped at step {result.steps}; continue with: python -m lora_trainer train --config {args.config} "
              f"--set resume=true")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .run import data_problems, data_report, prepare_data

    config = load_text_config(args.config, parse_overrides(args.set or []))
    data = prepare_data(config)
    for line in data_report(config, data) + [f"problem: {p}" for p in data_problems(data)]:
        print(line)
    print("ready to train")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .plan import plan_text

    result = plan_text(load_text_config(args.config, parse_overrides(args.set or [])))
    for line in result.lines():
        print(line)
    return 0 if result.fits in (None, True) else 1


def cmd_keys(args: argparse.Namespace) -> int:
    print(describe_text_keys())
    return 0
