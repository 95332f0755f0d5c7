"""Benchmark: the text-model LoRA trainer's tokens/s and peak memory, on a tiny random GPT-2 (the tests'
model) and on ~100M-parameter random models (GPT-2 small's shape, 124M; a Llama-architecture model, 110M),
beside a reference loop like peft's causal-LM examples (the model's own loss from `labels=`, `loss.item()`
every step) on the same model and batches. The memory plan's estimate is printed beside the measured peak.

Not a test. Run from the repository root:
    python benchmarks/bench_text.py [--models tiny,gpt2-124m,llama-110m] [--device cpu] [--steps 6]
                                    [--seq N] [--batch N]   (the same batch shape for every model; printed per row)
                                    [--threads N] [--repeat K]   (torch threads per loop; K alternating runs, medians)
On a shared CPU, `--threads 1 --repeat 2` is steadier: a 2-thread loop stalls whenever one of its threads waits
for a core, and alternating the loops spreads the other load over both.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' model builders (text_models.py)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PeakMemory  # noqa: E402
from text_models import build_tokenizer, learnable_text  # noqa: E402

MODELS = {  # name: (builder kwargs, batch size, sequence length)
    "tiny": ({"kind": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2, "vocab": None}, 8, 64),
    "gpt2-124m": ({"kind": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab": 50257}, 4, 256),
    "llama-110m": ({"kind": "llama", "hidden": 768, "layers": 12, "heads": 12, "intermediate": 2048,
                    "vocab": 32000}, 4, 256),
}


def build_model(folder: Path, spec: dict, seq: int) -> Path:
    """A random model of `spec` with a small BPE tokenizer (its ids are a subset of the model's vocabulary)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(folder, [learnable_text(4)], vocab_size=400)
    vocab = spec["vocab"] or len(tok)
    torch.manual_seed(0)
    if spec["kind"] == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=max(seq, 128), n_embd=spec["n_embd"], n_layer=spec["n_layer"],
                            n_head=spec["n_head"], eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(vocab_size=vocab, hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
                             num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                             num_key_value_heads=spec["heads"], max_position_embeddings=max(seq, 128),
                             tie_word_embeddings=True, eos_token_id=tok.eos_token_id)
        model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    return folder


def text_config(model: Path, data: Path, out: Path, batch: int, seq: int, steps: int, device: str, precision: str):
    from lora_trainer.text.config import text_config_from_dict

    return text_config_from_dict(dict(task="text", base_model=str(model), train_data=str(data), output_dir=str(out),
                                      max_seq_length=seq, batch_size=batch, max_steps=steps, lora_rank=8,
                                      device=device, mixed_precision=precision, overwrite=True))


def trainer_loop(config, warmup: int) -> dict:
    """The trainer (TextRun) on `config`: tokens/s over the steps after `warmup`, and peak memory."""
    from lora_trainer.events import Callback, StepEnded
    from lora_trainer.text.run import TextRun

    class Clock(Callback):
        def __init__(self):
            self.times = []

        def on_event(self, event):
            if isinstance(event, StepEnded):
                self.times.append(time.perf_counter())

    clock = Clock()
    run = TextRun(config, [clock], tensorboard=False)
    trainer = run.setup()
    device = trainer.device
    tokens = [sum(len(trainer.examples.examples[i].input_ids) for b in trainer.step_batches(s) for i in b)
              for s in range(config.max_steps)]
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        run.train()
    timed = clock.times[warmup:]
    seconds = timed[-1] - (clock.times[warmup - 1] if warmup else start)
    run.close()
    return {"tokens_per_s": sum(tokens[warmup:]) / seconds, "step_s": seconds / len(timed), "peak": memory.peak,
            "growth": memory.growth}


def reference_loop(config, warmup: int) -> dict:
    """What peft's causal-LM examples do: the same LoRA and batches, the model's own loss (labels=), AdamW,
    `loss.item()` every step."""
    from lora_trainer.text.model import add_lora, load_causal_lm, lora_targets
    from lora_trainer.text.run import TextRun
    from lora_trainer.utils.device import pick_device

    run = TextRun(config, tensorboard=False)
    trainer = run.setup()  # data and batches only: its model is replaced by a fresh one below
    run.close()
    device = pick_device(config.device)
    model = load_causal_lm(Path(config.base_model), torch.float32)
    model = add_lora(model, *lora_targets(model, "auto"), config.lora_rank, config.effective_alpha, 0.0, 0).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    model.train()
    times, tokens = [], []
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        for step in range(config.max_steps):
            for batch in trainer.step_batches(step):
                tensors = trainer.batch(batch)
                loss = model(**tensors).loss
                loss.backward()
                tokens.append(int(tensors["attention_mask"].sum()))
            optimizer.step()
            optimizer.zero_grad()
            loss.item()
            times.append(time.perf_counter())
    seconds = times[-1] - (times[warmup - 1] if warmup else start)
    return {"tokens_per_s": sum(tokens[warmup:]) / seconds, "step_s": seconds / (len(times) - warmup),
            "peak": memory.peak, "growth": memory.growth}


def child(args) -> None:
    """One loop on one model in this process (a fresh process per loop: its peak memory is its own)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    config = text_config(Path(args.model_dir), Path(args.data), Path(args.model_dir).parent / f"out-{args.child}",
                         args.batch, args.seq, args.steps + 2, args.device, args.precision)
    result = (trainer_loop if args.child == "trainer" else reference_loop)(config, 2)
    print(json.dumps(result))


def run_child(loop: str, model: Path, data: Path, batch: int, seq: int, args) -> dict:
    command = [sys.executable, __file__, "--child", loop, "--model-dir", str(model), "--data", str(data),
               "--batch", str(batch), "--seq", str(seq), "--steps", str(args.steps), "--device", args.device,
               "--precision", args.precision, "--threads", str(args.threads or 0)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,gpt2-124m,llama-110m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="no", help="mixed_precision of both loops (no | bf16 | fp16 | auto)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of each loop (default: torch's)")
    parser.add_argument("--repeat", type=int, default=1, help="run trainer and reference alternately K times; "
                        "the rows show medians and every run's tokens/s")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", choices=("trainer", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help="batch size of every model (default: the model's, "
                        "tiny 8, the 100M models 4)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length of every model (default: the model's, "
                        "tiny 64, the 100M models 256)")
    args = parser.parse_args()
    if args.child:
        return child(args)
    from transformers import AutoModelForCausalLM

    from lora_trainer.text.plan import plan_text

    rows = []
    with open("/proc/loadavg") as fh:
        print(f"load average at start: {' '.join(fh.read().split()[:3])}; torch threads "
              f"{args.threads or torch.get_num_threads()}; {args.steps} timed steps after 2 warm-up steps; "
              f"{args.repeat} run(s) of each loop")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data.txt"
        data.write_text(learnable_text(400), encoding="utf-8")
        for name in args.models.split(","):
            spec, batch, seq = MODELS[name]
            batch, seq = args.batch or batch, args.seq or seq
            model = build_model(root / name, spec, seq)
            params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(model)).parameters())
            estimate = plan_text(text_config(model, data, root / "plan", batch, seq, 1, args.device, args.precision))
            row = {"model": name, "params_m": round(params / 1e6, 1), "batch": batch, "seq": seq,
                   "plan_peak_gib": round(estimate.peak / 2**30, 3) if estimate.activations is not None else None,
                   "runs": {}}
            loops = ["trainer"] + ([] if args.no_reference else ["reference"])
            for _ in range(args.repeat):
                for loop in loops:
                    row["runs"].setdefault(loop, []).append(run_child(loop, model, data, batch, seq, args))
            row.update({loop: medians(row["runs"][loop]) for loop in loops})
            rows.append(row)
            print_row(row)
    with open("/proc/loadavg") as fh:
        print(f"load average at end: {' '.join(fh.read().split()[:3])}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def medians(runs: list) -> dict:
    """The median tokens/s and s/step of a loop's runs, their largest peak, and every run's tokens/s."""
    from statistics import median

    return {"tokens_per_s": median(r["tokens_per_s"] for r in runs), "step_s": median(r["step_s"] for r in runs),
            "peak": max(r["peak"] for r in runs), "growth": max(r["growth"] for r in runs),
            "each": [round(r["tokens_per_s"]) for r in runs]}


def print_row(row: dict) -> None:
    print(f"{row['model']}: {row['params_m']}M parameters, batch {row['batch']} x {row['seq']} tokens; "
          f"plan's peak estimate {row['plan_peak_gib']} GiB")
    for loop in ("trainer", "reference"):
        if loop in row:
            r = row[loop]
            print(f"  {loop:9} {r['tokens_per_s']:10.0f} tokens/s  {r['step_s']:7.3f} s/step  peak "
                  f"{r['peak'] / 2**30:6.2f} GiB (+{r['growth'] / 2**30:.2f} GiB while training)"
                  + (f"  runs: {r['each']}" if len(r["each"]) > 1 else ""))
    if "reference" in row:
        print(f"  trainer / reference: {row['trainer']['tokens_per_s'] / row['reference']['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
