"""`python -m lora_trainer <command>`: train, check, plan, caption, demo, ui, grid, keys, merge, combine, resize.

Errors the user can fix are printed as one line (no traceback): exit code 2 for config errors, 1 for
everything else that stops a run.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional

from .cli_train import TerminalProgress, cmd_train
from .errors import LoraTrainerError
from .utils.quiet import quiet_libraries


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


class CaptionBar:
    """A tqdm progress bar for `caption`; skipped broken images are named above it."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event: Any) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=event.total, unit="image", dynamic_ncols=True)
        if event.message:
            self.bar.set_description_str(event.message, refresh=False)
        if event.error:
            tqdm.write(f"skipped {event.file}: {event.error}")
        self.bar.update(event.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_caption(args: argparse.Namespace) -> int:
    from .caption import caption_folder

    bar = CaptionBar()
    try:
        result = caption_folder(args.input, args.output, fmt=args.format, backend=args.backend, model=args.model,
                                prefix=args.prefix, overwrite=args.overwrite, batch_size=args.batch_size,
                                device=args.device, progress=bar, clip_model=args.clip_model,
                                max_new_tokens=args.max_length, num_beams=args.num_beams,
                                tag_threshold=args.tag_threshold)
    finally:
        bar.close()
    where = result.output if args.format == "csv" else f"<image>.txt files in {result.output}"
    print(f"captioned {result.captioned} image(s) into {where}; {result.skipped} already had a caption"
          + (" (--overwrite recaptions them)" if result.skipped else ""))
    if result.broken:
        print(f"{len(result.broken)} image(s) could not be captioned: "
              + ", ".join(f"{path.name} ({reason})" for path, reason in result.broken))
    for note in result.notes:
        print(f"note: {note}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(Path(args.output), steps=args.steps, callbacks=[TerminalProgress()])
    print(f"LoRA written to {result.lora_path}")
    print(f"use it with <lora:{result.lora_path.stem}:1>")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .config import load_config, parse_overrides
    from .planner import plan

    config = load_config(args.config, parse_overrides(args.set or []))
    result = plan(config)
    for line in result.lines():
        print(line)
    return 0 if result.fits in (None, True) else 1


def cmd_grid(args: argparse.Namespace) -> int:
    from .grid import find_loras, grid_to_file, parse_weights

    loras = find_loras(args.loras)
    weights = parse_weights(args.weights)
    print(f"rendering {len(loras)} x {len(weights)} cells")
    out, _ = grid_to_file(loras, args.prompt, weights, out=Path(args.out) if args.out else None, base=args.base,
                          tokenizer_path=args.tokenizer_path, device=args.device, seed=args.seed, size=args.size,
                          steps=args.steps, cfg=args.cfg, negative=args.negative)
    print(f"grid written to {out}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        from .ui.app import check_port_free, launch
    except ImportError as exc:
        raise LoraTrainerError(f"the web page needs gradio ({exc}): pip install gradio") from None
    from .service import StandaloneService

    check_port_free(args.host, args.port)
    print(f"LoRA Trainer page: http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    launch(args.host, args.port, StandaloneService(args.output_root), block=True, quiet=True)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from .config import describe_keys

    print(describe_keys())
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .tools import merge_loras, parse_lora_arg

    result = merge_loras(args.base, [parse_lora_arg(t) for t in args.lora], args.out, precision=args.precision,
                         overwrite=args.overwrite)
    for lora in result.loras:
        print(f"{lora.file}: weight {lora.weight:g}, {lora.modules} modules")
    print(f"{result.weights_changed} weights changed; checkpoint ({result.precision}) written to {result.path}")
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from .tools import combine_loras, parse_lora_arg

    result = combine_loras([parse_lora_arg(t) for t in args.lora], args.out, rank=args.rank,
                           precision=args.precision, overwrite=args.overwrite)
    if args.rank is not None:
        _table(["module", "in LoRAs", "rank", "kept energy"],
               [(m.name, m.sources, m.rank, f"{m.energy:.2%}") for m in result.modules])
        print(f"kept energy overall: {result.energy:.2%}")
    else:
        print(f"exact: {len(result.modules)} modules, rank up to {max(m.rank for m in result.modules)}")
    print(f"LoRA written to {result.path}")
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    from .tools import resize_lora

    result = resize_lora(args.lora, args.rank, args.out, precision=args.precision, overwrite=args.overwrite)
    _table(["module", "rank", "new rank", "relative error"],
           [(m.name, m.rank, m.new_rank, f"{m.error:.2%}") for m in result.modules])
    print(f"relative Frobenius error overall: {result.error:.2%}")
    print(f"LoRA written to {result.path}")
    return 0


def _table(header: List[str], rows: List[tuple]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_trainer", description="Train kohya-format LoRAs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_training_commands(sub)
    _add_other_commands(sub)
    _add_lora_tools(sub)
    return parser


def _add_training_commands(sub) -> None:
    """train, check."""
    p = sub.add_parser("train", help="train a LoRA from a YAML config")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in output_dir (its LoRA, checkpoints, state, samples and logs are "
                        "deleted when this run starts); without it such a run is refused")
    p.add_argument("--nproc", type=int, default=0,
                   help="train data-parallel in N processes on this machine (one per GPU; runs torchrun); "
                        "batch_size is per process")

    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check", help="report on the dataset of a config (exit 0: can train, 1: cannot)")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_check)


def _add_other_commands(sub) -> None:
    """caption, demo, plan, grid, ui, keys."""
    p = sub.add_parser("caption", help="caption a folder of images (BLIP, CLIP tags, ...) into metadata.csv or .txt")
    p.add_argument("--input", required=True, help="folder of images (subfolders included)")
    p.add_argument("--output", help="CSV to write (default: INPUT/metadata.csv); not used with --format txt")
    p.add_argument("--format", choices=("csv", "txt"), default="csv",
                   help="csv: file_name,text rows; txt: <image>.txt beside each image")
    p.add_argument("--backend", default="blip",
                   help="blip (default) | clip-tags | blip+clip-tags; webui-interrogator and webui-deepbooru run "
                        "only inside the WebUI")
    p.add_argument("--model", help="the backend's model: a local folder (a hub id only if cached or reachable)")
    p.add_argument("--clip-model", help="CLIP model folder for blip+clip-tags (default ViT-L/14)")
    p.add_argument("--prefix", default="", help='put in front of every new caption, e.g. "sks, "')
    group = p.add_mutually_exclusive_group()
    group.add_argument("--skip-existing", dest="overwrite", action="store_false", default=False,
                       help="keep the captions images already have (default)")
    group.add_argument("--overwrite", dest="overwrite", action="store_true", help="recaption every image")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--max-length", type=int, default=40, help="BLIP: longest caption in tokens")
    p.add_argument("--num-beams", type=int, default=3, help="BLIP: beam search width")
    p.add_argument("--tag-threshold", type=float, default=0.2,
                   help="CLIP tags: keep a phrase whose share of its category is at least this (0: always the best)")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("demo", help="train a tiny random model on generated images (CPU, about a minute)")
    p.add_argument("--output", default="demo_output", help="folder for the demo model, data and LoRA")
    p.add_argument("--steps", type=int, default=200)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("plan", help="estimate peak memory of a config and the largest batch that fits")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("grid", help="image grid: rows = LoRA checkpoints, columns = weights")
    p.add_argument("--loras", nargs="+", required=True, help="LoRA files or a training output folder")
    p.add_argument("--prompt", required=True)
    p.add_argument("--weights", default="0.4,0.6,0.8,1.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", default=None, help="base model (default: base_model from the folder's config.yaml)")
    p.add_argument("--tokenizer-path", default=None, help="default: tokenizer_path from the folder's config.yaml")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--negative", default="")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="PNG path (default: grid.png next to the LoRAs)")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("ui", help="the trainer's web page (binds to localhost unless --host says otherwise)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=7861)
    p.add_argument("--output-root", default="output", help="where runs go when output_dir is empty")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("keys", help="list every config key with its default and help")
    p.set_defaults(func=cmd_keys)


def _add_lora_tools(sub) -> None:
    """merge, combine, resize."""
    lora_help = "a LoRA file, optionally with its weight: a.safetensors:0.8 (repeatable)"
    p = sub.add_parser("merge", help="bake LoRAs into a single-file checkpoint")
    p.add_argument("--base", required=True, help="the checkpoint (.safetensors or .ckpt)")
    p.add_argument("--lora", required=True, action="append", help=lora_help)
    p.add_argument("--out", required=True, help="the merged checkpoint (.safetensors)")
    _add_output_args(p, "default: each tensor keeps the base's dtype")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("combine", help="one LoRA equal to the weighted sum of several")
    p.add_argument("--lora", required=True, action="append", help=lora_help)
    p.add_argument("--rank", type=int, help="cut to this rank by SVD (default: exact, ranks stacked)")
    p.add_argument("--out", required=True, help="the combined LoRA (.safetensors)")
    _add_output_args(p, "default: the first LoRA's dtype")
    p.set_defaults(func=cmd_combine)

    p = sub.add_parser("resize", help="change a LoRA's rank by SVD and report the error")
    p.add_argument("--lora", required=True, help="the LoRA file")
    p.add_argument("--rank", required=True, type=int, help="the new rank")
    p.add_argument("--out", required=True, help="the resized LoRA (.safetensors)")
    _add_output_args(p, "default: the LoRA's dtype")
    p.set_defaults(func=cmd_resize)


def _add_output_args(p: argparse.ArgumentParser, precision_default: str) -> None:
    p.add_argument("--precision", choices=["fp16", "bf16", "fp32"], help=f"output dtype ({precision_default})")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:  # the terminal shows engine messages once, above its progress bar
        handler.addFilter(lambda record: not getattr(record, "lora_trainer_event", False))
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
