"""Bad inputs and faults, one table per entry point: each is refused (or listed and skipped) with a message
naming the problem, never a traceback, never a file written outside the run's output folder, and never a
change to an earlier result (every file's hash is compared before and after).

CLI cases run `lora_trainer.cli.main` in this process (pre-flight failures happen before any model loads,
so each takes milliseconds); a few run `python -m lora_trainer` as a process, where the process is what is
tested (tracebacks, warnings on the console). The page backend and HTTP API cases are in
tests/test_bad_inputs_api.py; the world both run in is tests/bad_inputs_world.py.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import pytest

from lora_trainer import cli
from lora_trainer.engine.output_folder import FolderLock
from lora_trainer.models.tokenizers import SHIPPED

from bad_inputs_world import W, assert_nothing_else_written, make_world, only_file, tree_hashes


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    return make_world(tmp_path_factory, tiny_model_dir)


ROOT = Path(__file__).resolve().parent.parent


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression-bomb-like file: tiny on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    import io

    from PIL import Image

    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


HEIC_HEADER = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


# ---------------------------------------------------------------------------- CLI cases
@dataclass
class Case:
    id: str
    argv: Callable[[W], List[str]]
    code: int
    said: str
    prepare: Optional[Callable[[W], None]] = None  # before the case (e.g. hold a lock)


def _train(w: W, **changes) -> List[str]:
    return ["train", "--config", w.cfg(**changes)]


def _check_data(w: W, name: str, content: bytes) -> List[str]:
    return ["check", "--config", w.cfg(train_data_dir=str(w.data_with(name, content)))]


def _fake_model(w: W, without: str) -> str:
    folder = w.tmp / "model"
    for p in w.model.rglob("*"):
        if p.is_file() and not p.relative_to(w.model).parts[0] == without:
            (folder / p.relative_to(w.model)).parent.mkdir(parents=True, exist_ok=True)
            (folder / p.relative_to(w.model)).write_bytes(p.read_bytes())
    return str(folder)


def _tokenizer_folder(w: W, config: str) -> str:
    folder = w.tmp / "tok"
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((SHIPPED / name).read_bytes())
    (folder / "tokenizer_config.json").write_text(config)
    return str(folder)


def _earlier_lora(w: W) -> str:
    return str(w.earlier / "earlier.safetensors")


CLI_CASES = [
    # --- config files and --set
    Case("yaml syntax", lambda w: ["train", "--config", w.text_cfg("a: 1\nb: [\n")], 2, "at line 3, column 1"),
    Case("not utf-8", lambda w: ["train", "--config", w.text_cfg("", data=b"\xff\xfe lora_rank: 4\n")], 2,
         "is not UTF-8 text"),
    Case("duplicate key", lambda w: ["train", "--config", w.text_cfg("lora_rank: 4\nseed: 1\nlora_rank: 8\n")], 2,
         "key 'lora_rank' appears twice, on line 1 and line 3"),
    Case("config is a folder", lambda w: ["train", "--config", str(w.earlier)], 2,
         "is a folder, not a YAML file (did you mean"),
    Case("config missing", lambda w: ["train", "--config", str(w.tmp / "nope.yaml")], 2, "does not exist"),
    Case("config is a list", lambda w: ["train", "--config", w.text_cfg("- a\n- b\n")], 2, "key: value pairs"),
    Case("--set unparsable", lambda w: _train(w) + ["--set", "lora_rank=["], 2, "the value cannot be read"),
    Case("--set without =", lambda w: _train(w) + ["--set", "lora_rank"], 2, "expects key=value"),
    Case("--set empty key", lambda w: _train(w) + ["--set", "=4"], 2, "expects key=value"),
    Case("unknown key", lambda w: _train(w, learning_rat=1e-4), 2, "did you mean 'learning_rate'"),
    # --- numbers
    Case("lr nan", lambda w: _train(w, learning_rate=float("nan")), 2, "learning_rate: nan is not a finite number"),
    Case("lr inf", lambda w: _train(w, learning_rate=float("inf")), 2, "is not a finite number"),
    Case("lr negative", lambda w: _train(w, learning_rate=-1e-4), 2, "must be greater than 0"),
    Case("lr zero", lambda w: _train(w, learning_rate=0), 2, "a learning rate of 0 trains nothing"),
    Case("lr text", lambda w: _train(w, learning_rate="fast"), 2, "expected a number"),
    Case("unet_lr zero", lambda w: _train(w, unet_lr=0.0), 2, "unet_lr: 0 must be greater than 0"),
    Case("te lr nan", lambda w: _train(w, text_encoder_lr=float("nan")), 2, "text_encoder_lr: nan"),
    Case("alpha zero", lambda w: _train(w, lora_alpha=0), 2, "scales the LoRA by 0"),
    Case("rank zero", lambda w: _train(w, lora_rank=0), 2, "lora_rank: 0 is below the minimum 1"),
    Case("batch negative", lambda w: _train(w, batch_size=-2), 2, "batch_size: -2 is below the minimum"),
    Case("dropout over 1", lambda w: _train(w, caption_dropout_rate=1.5), 2, "above the maximum 1.0"),
    Case("epochs text", lambda w: _train(w, epochs="ten"), 2, "expected a whole number"),
    Case("gamma zero", lambda w: _train(w, min_snr_gamma=0), 2, "min_snr_gamma: 0 must be greater than 0"),
    Case("preferred weight inf", lambda w: _train(w, preferred_weight=float("-inf")), 2, "not a finite number"),
    Case("resolution odd", lambda w: _train(w, resolution=100, min_bucket_reso=None, max_bucket_reso=None), 2,
         "must be a multiple of 8"),
    Case("min bucket above resolution", lambda w: _train(w, min_bucket_reso=256, max_bucket_reso=None), 2,
         "min_bucket_reso 256 is larger than resolution 64"),
    Case("max bucket below resolution", lambda w: _train(w, resolution=512, max_bucket_reso=384), 2,
         "max_bucket_reso 384 is smaller than resolution 512"),
    # --- output name and folder
    Case("name with ..", lambda w: _train(w, output_name="../escape"), 2, "is not a plain file name"),
    Case("absolute name", lambda w: _train(w, output_name="/tmp/escape"), 2, "is not a plain file name"),
    Case("name with NUL", lambda w: _train(w, output_name="a\x00b"), 2, "control characters (\\x00)"),
    Case("name with newline", lambda w: _train(w, output_name="a\nb"), 2, "control characters (\\x0a)"),
    Case("name with colon", lambda w: _train(w, output_name="style:v2"), 2, "a file name may not contain"),
    Case("name is ..", lambda w: _train(w, output_name=".."), 2, "starts with a dot"),
    Case("name too long", lambda w: _train(w, output_name="x" * 240), 1, "choose a shorter output_name"),
    Case("earlier run", lambda w: _train(w, output_dir=str(w.earlier), output_name="earlier"), 1,
         "holds an earlier run (earlier.safetensors"),
    Case("earlier run, other name", lambda w: _train(w, output_dir=str(w.earlier), output_name="other"), 1,
         "holds an earlier run (state/"),
    Case("resume without state", lambda w: _train(w, resume=True), 2, "no saved training state"),
    Case("output_dir is a file", lambda w: _train(w, output_dir=str(w.earlier / "earlier.json")), 1,
         "is not writable"),
    Case("folder of a live run", lambda w: _train(w), 1, f"is in use by another training run (pid {os.getpid()}",
         prepare=lambda w: w.__dict__.setdefault("lock", FolderLock(w.out).acquire())),
    # --- data
    Case("data missing", lambda w: _train(w, train_data_dir=str(w.tmp / "none")), 1, "does not exist"),
    Case("data is a file", lambda w: _train(w, train_data_dir=str(w.earlier / "earlier.json")), 1,
         "is not a folder"),
    Case("data empty", lambda w: _train(w, train_data_dir=str(w.tmp)), 1, "contains no images"),
    Case("data without images", lambda w: _train(w, train_data_dir=str(only_file(w, "notes.txt", b"hi"))), 1,
         "contains no images"),
    Case("only broken images", lambda w: _train(w, train_data_dir=str(only_file(w, "a.png", b"not a png"))), 1,
         "none of the 1 image files can be opened"),
    # --- images: listed with their reason and left out; the check goes on (exit 0)
    Case("image not an image", lambda w: _check_data(w, "fake.png", b"plain text, not a png"), 0,
         "fake.png: not an image"),
    Case("image empty", lambda w: _check_data(w, "empty.jpg", b""), 0, "empty.jpg: empty file"),
    Case("image decompression bomb", lambda w: _check_data(w, "bomb.png", png_header(20000, 20000)), 0,
         "bomb.png: refused as a decompression bomb"),
    Case("image over the pixel limit", lambda w: _check_data(w, "huge.png", png_header(9000, 9000)), 0,
         "huge.png: 9000x9000 is 81 megapixels, over the limit of 64"),
    Case("image animated", lambda w: _check_data(w, "anim.gif", animated_gif()), 0,
         "anim.gif: animated or multi-page (3 frames)"),
    Case("image heic without plugin", lambda w: _check_data(w, "photo.heic", HEIC_HEADER), 0,
         "photo.heic: this Pillow cannot read HEIC images: install the pillow-heif package"),
    Case("csv row without file", lambda w: _check_data(w, "metadata.csv", (w.data / "metadata.csv").read_bytes() +
                                                       b"9_gone.png,gone\n"), 0,
         "MISSING FILE  metadata.csv names 9_gone.png"),
    # --- model
    Case("model missing", lambda w: _train(w, base_model=str(w.tmp / "none.safetensors")), 1, "does not exist"),
    Case("model without unet", lambda w: _train(w, base_model=_fake_model(w, "unet")), 1,
         "is a diffusers folder without unet/"),
    Case("model without vae", lambda w: _train(w, base_model=_fake_model(w, "vae")), 1, "without vae/"),
    Case("model wrong type", lambda w: _train(w, base_model=w.text_cfg("x", name="model.txt")), 1,
         "unsupported file type '.txt'"),
    Case("tokenizer_path missing", lambda w: _train(w, tokenizer_path=str(w.tmp / "none")), 1, "is not a folder"),
    Case("tokenizer_path without vocab", lambda w: _train(w, tokenizer_path=str(w.tmp)), 1,
         "has no vocab.json and merges.txt"),
    Case("tokenizer without model_max_length", lambda w: _train(w, tokenizer_path=_tokenizer_folder(
        w, '{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}')), 1, "has model_max_length 1000000"),
    # --- disk
    Case("disk too small", lambda w: _train(w, lora_rank=4000), 1, "not enough disk space",
         prepare=lambda w: w.__dict__.setdefault("free", 100 * 2**20)),
    # --- LoRA tools
    Case("combine weight not a number", lambda w: ["combine", "--lora", f"{_earlier_lora(w)}:abc", "--out",
                                                   str(w.out / "c.safetensors")], 1, "'abc' in"),
    Case("combine weight inf", lambda w: ["combine", "--lora", f"{_earlier_lora(w)}:inf", "--out",
                                          str(w.out / "c.safetensors")], 1, "not a finite number"),
    Case("combine over an existing file", lambda w: ["combine", "--lora", _earlier_lora(w), "--out",
                                                     str(w.earlier / "earlier-step00000001.safetensors")], 1,
         "already exists; choose another name, or overwrite it (--overwrite)"),
    Case("resize into its input", lambda w: ["resize", "--lora", _earlier_lora(w), "--rank", "2", "--out",
                                             _earlier_lora(w)], 1, "is also an input"),
    Case("merge without base", lambda w: ["merge", "--base", str(w.tmp / "none.safetensors"), "--lora",
                                          _earlier_lora(w), "--out", str(w.out / "m.safetensors")], 1, "none.safetensors"),
]


@pytest.fixture
def quiet_main(monkeypatch):
    """cli.main without changing this process's environment or warning filters (that is tested in a process)."""
    monkeypatch.setattr(cli, "quiet_libraries", lambda: None)
    return cli.main


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input(case, world, tmp_path, capsys, monkeypatch, quiet_main):
    w = W(world, tmp_path)
    monkeypatch.chdir(tmp_path)
    if case.prepare:
        case.prepare(w)
    if "free" in w.__dict__:
        import shutil

        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=w.free))
    argv = case.argv(w)
    before = tree_hashes(world["root"], world["model"], tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = quiet_main(argv)
        finally:
            if "lock" in w.__dict__:
                w.lock.release()
    out, err = capsys.readouterr()
    assert code == case.code, out + err
    assert case.said in out + err, out + err
    assert "Traceback" not in out + err
    assert not [x for x in caught if "PIL" in x.filename], [str(x.message) for x in caught]
    assert_nothing_else_written(before, tree_hashes(world["root"], world["model"], tmp_path), w.out)


def test_disk_full_during_a_save_says_what_was_kept(world, tmp_path, capsys, monkeypatch, quiet_main):
    """ENOSPC at the second step checkpoint: exit 1, the first checkpoint and its state are named and intact."""
    import safetensors.torch as st

    w = W(world, tmp_path)
    real, calls = st.save_file, []

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", full_disk)
    before = tree_hashes(world["root"], world["model"])
    code = quiet_main(_train(w, max_steps=4, save_steps=1))
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err
    first = w.out / "out-step00000001.safetensors"
    assert f"could not write {w.out / 'out-step00000002.safetensors'} at step 2 (No space left on device)" in err
    assert f"Kept: {first} and the training state of step 1; continue with: python -m lora_trainer train " \
           f"--config {w.out / 'config.yaml'} --set resume=true" in err
    from safetensors.torch import load_file

    assert load_file(str(first)) and (w.out / "state" / "training_state.pt").is_file()
    assert not [p for p in w.out.iterdir() if p.name.endswith(".tmp")]
    assert tree_hashes(world["root"], world["model"]) == before


def test_port_in_use(capsys, quiet_main):
    pytest.importorskip("gradio")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = quiet_main(["ui", "--port", str(port)])
    out, err = capsys.readouterr()
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    assert "Traceback" not in out + err and "LoRA Trainer page" not in out


# ---------------------------------------------------------------------------- real processes
PROCESS_CASES = [
    ("yaml syntax", lambda w: ["train", "--config", w.text_cfg("a: [\n")], 2, "line 2, column 1"),
    ("lr nan", lambda w: _train(w, learning_rate=float("nan")), 2, "not a finite number"),
    ("earlier run", lambda w: _train(w, output_dir=str(w.earlier), output_name="earlier"), 1, "--overwrite"),
    ("bomb and animation", lambda w: ["check", "--config", w.cfg(train_data_dir=str(_bad_images(w)))], 0,
     "refused as a decompression bomb"),
]


def _bad_images(w: W) -> Path:
    folder = w.data_with("bomb.png", png_header(20000, 20000))
    (folder / "big.png").write_bytes(png_header(9600, 9600))  # over Pillow's own warning limit too
    (folder / "anim.gif").write_bytes(animated_gif())
    return folder


@pytest.mark.parametrize("case", PROCESS_CASES, ids=[c[0] for c in PROCESS_CASES])
def test_cli_process_prints_no_traceback_or_library_warning(case, world, tmp_path):
    _, argv, code, said = case
    w = W(world, tmp_path)
    args = argv(w)
    before = tree_hashes(world["root"], world["model"])
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "lora_trainer", *args], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text
    assert said in text
    assert "Traceback" not in text and "site-packages" not in text and "Warning" not in text, text
    assert tree_hashes(world["root"], world["model"]) == before
