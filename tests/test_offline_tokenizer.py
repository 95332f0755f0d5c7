"""Single-file checkpoints train with an empty Hugging Face cache and no tokenizer_path (the CLIP tokenizer
shipped in the package), and a tokenizer that cannot fit the text encoder is refused, never used."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_trainer.errors import ModelLoadError
from lora_trainer.models.tokenizers import SHIPPED, check_tokenizer, load_clip_tokenizer

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh process: HF_HOME is read when transformers is imported. Trains each checkpoint 2 steps and
# prints which tokenizer each bundle used.
SCRIPT = """
import json, sys
from lora_trainer.config import config_from_dict
from lora_trainer.engine.run import LoraRun
out = {}
for family, raw in json.loads(sys.argv[1]).items():
    run = LoraRun(config_from_dict(raw), tensorboard=False)
    try:
        run.setup()
        run.train()
        path = run.save_final()
        tokenizers = [getattr(run.bundle, n).name_or_path for n in ("tokenizer", "tokenizer_2") if hasattr(run.bundle, n)]
        out[family] = {"lora": str(path), "tokenizers": tokenizers, "vocab": len(run.bundle.tokenizer)}
    finally:
        run.close()
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def shipped_vocab_checkpoints(tmp_path_factory):
    """Tiny SD1, SD2 and SDXL single-file checkpoints whose text encoders have CLIP's real vocabulary (49408)."""
    pytest.importorskip("ldm", reason="stable-diffusion-sdkit builds the tiny single-file checkpoints")
    from ldm_families import build_tiny_sd2_ldm, build_tiny_sdxl_sgm, save_sd2_single_file, save_sdxl_single_file
    from ldm_tiny import build_tiny_ldm, save_single_file

    tmp = tmp_path_factory.mktemp("offline")
    tokenizer = load_clip_tokenizer(str(SHIPPED), tmp)
    return {
        "sd1": save_single_file(build_tiny_ldm(tmp, tokenizer=tokenizer), tmp / "sd1" / "m.safetensors"),
        "sd2": save_sd2_single_file(build_tiny_sd2_ldm(tmp, tokenizer=tokenizer), tmp / "sd2" / "m.safetensors"),
        "sdxl": save_sdxl_single_file(build_tiny_sdxl_sgm(tmp, tokenizer=tokenizer), tmp / "sdxl" / "m.safetensors"),
    }


def test_single_files_train_with_an_empty_hf_cache(tmp_path, shipped_vocab_checkpoints, color_data):
    configs = {family: dict(train_data_dir=str(color_data), base_model=str(path), output_dir=str(tmp_path / family),
                            resolution=64, lora_rank=2, batch_size=2, max_steps=2, device="cpu",
                            mixed_precision="no", learning_rate=1e-3)
               for family, path in shipped_vocab_checkpoints.items()}
    empty = tmp_path / "empty_hf_home"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(empty), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HOME": str(tmp_path / "home")}
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(configs)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert set(result) == {"sd1", "sd2", "sdxl"}
    for family, info in result.items():
        assert Path(info["lora"]).is_file(), family
        assert info["vocab"] == 49408
        assert all(Path(t).resolve() == SHIPPED for t in info["tokenizers"]), (family, info["tokenizers"])
    # (transformers 4.30 and diffusers 0.31 write cache-layout markers, hub/version*.txt, when imported)
    assert not [p for p in empty.rglob("*") if p.is_file() and not p.name.startswith("version")], "nothing downloaded"
    assert not (tmp_path / "home").exists(), "nothing may be written into the home folder (caches)"


def test_shipped_tokenizer_gives_clips_token_ids(tmp_path):
    tokenizer = load_clip_tokenizer(None, tmp_path)
    assert Path(tokenizer.name_or_path).resolve() == SHIPPED or "clip-vit-large-patch14" in tokenizer.name_or_path
    # ids of OpenAI's CLIP BPE (open_clip's SimpleTokenizer gives the same)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.model_max_length == 77 and len(tokenizer) == 49408


def _broken_copy(tmp_path: Path, **config_changes) -> Path:
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((SHIPPED / name).read_bytes())
    config = json.loads((SHIPPED / "tokenizer_config.json").read_text())
    config.update(config_changes)
    config = {k: v for k, v in config.items() if v is not None}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes,said", [
    ({"model_max_length": None}, "model_max_length"),  # missing: transformers reads it as 10^30
    ({"model_max_length": 4096}, "model_max_length 4096"),
])
def test_an_unusable_model_max_length_is_refused(tmp_path, changes, said):
    tokenizer = load_clip_tokenizer(str(_broken_copy(tmp_path, **changes)), tmp_path)
    with pytest.raises(ModelLoadError, match=said):
        check_tokenizer(tokenizer, "tokenizer_path", 49408, 77)


def test_a_vocabulary_of_another_size_is_refused(tmp_path):
    tokenizer = load_clip_tokenizer(None, tmp_path)
    with pytest.raises(ModelLoadError, match="49408 tokens but the text encoder has 520"):
        check_tokenizer(tokenizer, "the cache", 520, 77)


def test_a_tokenizer_path_without_vocabulary_is_refused(tmp_path):
    (tmp_path / "tok").mkdir()
    with pytest.raises(ModelLoadError, match="no vocab.json and merges.txt"):
        load_clip_tokenizer(str(tmp_path / "tok"), tmp_path)
    (tmp_path / "tok" / "vocab.json").write_text("{not json")
    (tmp_path / "tok" / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ModelLoadError, match="cannot be read"):
        load_clip_tokenizer(str(tmp_path / "tok"), tmp_path)
