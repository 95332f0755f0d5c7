"""`python -m lora_trainer <command>`: train, check, demo, ui, keys (and more as they are added).

Errors the user can fix are printed as one line (no traceback): exit code 2 for config errors, 1 for
everything else that stops a run.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional

from .errors import LoraTrainerError
from .events import Callback, CheckpointSaved, Message, RunStarted, StepEnded


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


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config, parse_overrides
    from .engine.run import train

    config = load_config(args.config, parse_overrides(args.set or []))
    progress = TerminalProgress()
    try:
        result = train(config, [progress])
    finally:
        progress.close()
    name = result.lora_path.stem
    print(f"LoRA written to {result.lora_path}")
    print(f"use it with <lora:{name}:{config.preferred_weight:g}>")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .config import load_config, parse_overrides
    from .data.doctor import build_report
    from .engine.run import build_training_set

    config = load_config(args.config, parse_overrides(args.set or []))
    dataset = build_training_set(config)
    report = build_report(dataset, config.batch_size, config.gradient_accumulation_steps, dataset.scan.broken,
                          count_tokens=_token_counter(config))
    for line in report.lines():
        print(line)
    return 0 if report.can_train else 1


def _token_counter(config):
    """Count CLIP tokens with the model's tokenizer when it can be found offline, else None."""
    try:
        from pathlib import Path as _P

        from .models.tokenizers import load_clip_tokenizer

        base = _P(config.base_model)
        near = base if base.is_dir() else base.parent
        tok = load_clip_tokenizer(config.tokenizer_path, near)
    except Exception:  # noqa: BLE001 - the report works without token counts
        return None
    return lambda text: len(tok(text).input_ids) - 2


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(Path(args.output), steps=args.steps, callbacks=[TerminalProgress()])
    print(f"LoRA written to {result.lora_path}")
    print(f"use it with <lora:{result.lora_path.stem}:1>")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        from .ui.app import launch
    except ImportError as exc:
        raise LoraTrainerError(f"the web page needs gradio ({exc}): pip install gradio") from None
    from .backend import StandaloneBackend

    print(f"LoRA Trainer page: http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    launch(args.host, args.port, StandaloneBackend(args.output_root), block=True, quiet=True)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from .config import describe_keys

    print(describe_keys())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_trainer", description="Train kohya-format LoRAs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a LoRA from a YAML config")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check", help="report on the dataset of a config (exit 0: can train, 1: cannot)")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="train a tiny random model on generated images (CPU, about a minute)")
    p.add_argument("--output", default="demo_output", help="folder for the demo model, data and LoRA")
    p.add_argument("--steps", type=int, default=200)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ui", help="the trainer's web page (binds to localhost unless --host says otherwise)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=7861)
    p.add_argument("--output-root", default="output", help="where runs go when output_dir is empty")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("keys", help="list every config key with its default and help")
    p.set_defaults(func=cmd_keys)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except LoraTrainerError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}" if not str(exc).startswith("config error") else str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
