"""Auto-captioning: tiny random BLIP/CLIP models loaded from folders like `--model PATH`, CSV and .txt outputs,
resuming, broken images, CLIP tag ranking with a known answer, memory release, and the WebUI backends (fakes)."""
from __future__ import annotations

import csv
import gc
import sys
import types
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from lora_trainer.caption import (CaptionerRegistry, CaptionerSpec, Captioner, apply_prefix,
                                  caption_folder, default_captioners)
from lora_trainer.caption.blip_clip import build_blip_clip
from lora_trainer.caption.clip_tags import Category, ClipTagger, all_phrases, load_vocabulary, rank_tags
from lora_trainer.caption.loading import resolve_model_folder
from lora_trainer.hosts.a1111.state import preserved_state
from lora_trainer.cli import main
from lora_trainer.data.captions import read_metadata_csv
from lora_trainer.data.scan import scan_dataset
from lora_trainer.errors import CaptionError, ModelLoadError

FAST = dict(max_new_tokens=5, num_beams=1, device="cpu")  # keep BLIP's generate short on CPU
GOOD = ["0_red.png", "1_green.png", "2_blue.png", "sub/3_yellow.png"]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    from tiny_captioners import build_tiny_blip

    return build_tiny_blip(tmp_path_factory.mktemp("models") / "blip")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from tiny_captioners import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "clip")


@pytest.fixture
def images(tmp_path) -> Path:
    """Four good images (one in a subfolder) and one broken file, no captions."""
    root = tmp_path / "data"
    colours = [(220, 30, 30), (30, 200, 60), (30, 60, 220), (230, 210, 40)]
    for rel, rgb in zip(GOOD, colours):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 40), rgb).save(root / rel)
    (root / "broken.png").write_bytes(b"this is not a png")
    return root


class EchoCaptioner(Captioner):
    """A model-free backend: the caption is the image's colour; records what it was asked."""

    def __init__(self, log: list):
        self.log = log

    def caption(self, images):
        self.log.append(len(images))
        return ["rgb %d %d %d" % img.getpixel((0, 0)) for img in images]


def echo_registry(log: list, builds: list) -> CaptionerRegistry:
    def build(options):
        builds.append(options)
        return EchoCaptioner(log)

    return CaptionerRegistry([CaptionerSpec("echo", "test backend", build)])


def csv_rows(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ acceptance 1
def test_cli_blip_csv_one_caption_per_good_image_prefix_once_trainer_reads_it(images, blip_dir, capsys):
    out = images / "metadata.csv"
    code = main(["caption", "--input", str(images), "--output", str(out), "--model", str(blip_dir),
                 "--prefix", "sks, ", "--batch-size", "8", "--device", "cpu", "--max-length", "5", "--num-beams", "1"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "broken.png" in stdout and "captioned 4 image(s)" in stdout
    rows = csv_rows(out)
    assert sorted(r["file_name"] for r in rows) == sorted(GOOD)  # exactly one row per good image
    for row in rows:
        assert row["text"].startswith("sks") and row["text"].count("sks") == 1
    assert not list(images.rglob("*.txt"))
    scan = scan_dataset(str(images), metadata_path=str(out))  # the trainer reads the CSV as written
    assert sorted(r.rel for r in scan.records) == sorted(GOOD)
    assert all(r.caption_source == "csv" for r in scan.records)
    assert {r.rel: r.caption for r in scan.records} == {r["file_name"]: r["text"] for r in rows}
    assert [p.name for p, _ in scan.broken] == ["broken.png"]


def test_clip_tags_txt_sidecars(images, clip_dir):
    result = caption_folder(str(images), fmt="txt", backend="clip-tags", model=str(clip_dir), prefix="sks",
                            batch_size=8, tag_threshold=0.0, **FAST)
    assert result.captioned == 4 and [p.name for p, _ in result.broken] == ["broken.png"]
    written = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.txt"))
    assert written == sorted(g[:-4] + ".txt" for g in GOOD)
    n_tags = sum(c.top for c in load_vocabulary())  # threshold 0: every category contributes its top N
    for rel in GOOD:
        text = (images / rel).with_suffix(".txt").read_text(encoding="utf-8")
        assert text.startswith("sks ") and text.count("sks") == 1
        assert len(text[4:].split(", ")) == n_tags
    assert not (images / "metadata.csv").exists()
    scan = scan_dataset(str(images))
    assert all(r.caption_source == "sidecar" for r in scan.records) and len(scan.records) == 4


def test_blip_plus_clip_tags_joins_both(images, blip_dir, clip_dir):
    result = caption_folder(str(images), backend="blip+clip-tags", model=str(blip_dir), clip_model=str(clip_dir),
                            batch_size=8, tag_threshold=0.0, **FAST)
    assert result.captioned == 4
    n_tags = sum(c.top for c in load_vocabulary())
    for text in read_metadata_csv(images / "metadata.csv").values():
        assert len(text.split(", ")) >= n_tags  # BLIP's sentence (if any) then every category's tags


def test_skip_existing_leaves_sidecars_byte_identical(images):
    own = b"my own caption \r\n"
    (images / "0_red.txt").write_bytes(own)
    log, builds = [], []
    result = caption_folder(str(images), fmt="txt", backend="echo", backends=echo_registry(log, builds))
    assert (images / "0_red.txt").read_bytes() == own
    assert result.skipped == 1 and result.captioned == 3 and log == [3]
    assert (images / "sub/3_yellow.txt").read_text() == "rgb 230 210 40"


def test_skip_existing_leaves_csv_rows_byte_identical_and_overwrite_keeps_columns(images):
    out = images / "metadata.csv"
    original = b'file_name,text,rating\r\n"0_red.png","hand ""quoted"" caption",5\r\n1_green.png,,3'
    out.write_bytes(original)
    log, builds = [], []
    registry = echo_registry(log, builds)
    first = caption_folder(str(images), backend="echo", prefix="sks, ", backends=registry)
    assert first.skipped == 1 and sorted(first.captions) == ["1_green.png", "2_blue.png", "sub/3_yellow.png"]
    kept = b'file_name,text,rating\r\n"0_red.png","hand ""quoted"" caption",5\r\n'
    assert out.read_bytes().startswith(kept + b'1_green.png,"sks, rgb 30 200 60",3\r\n')  # empty row filled in
    rows = read_metadata_csv(out)
    assert rows["0_red.png"] == 'hand "quoted" caption' and rows["sub/3_yellow.png"] == "sks, rgb 230 210 40"

    # a second run has nothing to do: the file is untouched and no model is built
    before, n_builds = out.read_bytes(), len(builds)
    again = caption_folder(str(images), backend="echo", backends=registry)
    assert again.captioned == 0 and again.skipped == 4 and out.read_bytes() == before and len(builds) == n_builds

    # new images are appended after the existing bytes
    Image.new("RGB", (40, 40), (1, 2, 3)).save(images / "new.png")
    caption_folder(str(images), backend="echo", backends=registry)
    assert out.read_bytes().startswith(before) and read_metadata_csv(out)["new.png"] == "rgb 1 2 3"

    caption_folder(str(images), backend="echo", overwrite=True, prefix="sks, ", backends=registry)
    rows = csv_rows(out)
    assert {r["file_name"]: r["text"] for r in rows}["0_red.png"] == "sks, rgb 220 30 30"
    assert {r["file_name"]: r["rating"] for r in rows}["0_red.png"] == "5"  # other columns kept
    assert len(rows) == 5


def test_stop_then_resume(images):
    log, builds = [], []
    registry = echo_registry(log, builds)
    seen = []
    stopped = caption_folder(str(images), backend="echo", batch_size=2, backends=registry,
                             progress=seen.append, should_stop=lambda: len(log) >= 1)
    assert stopped.stopped and stopped.captioned == 2
    assert len(read_metadata_csv(images / "metadata.csv")) == 2  # written after every batch
    assert seen[0].total == 5 and any(e.error for e in seen) is False
    resumed = caption_folder(str(images), backend="echo", batch_size=2, backends=registry, progress=seen.append)
    assert resumed.skipped == 2 and resumed.captioned == 2 and [p.name for p, _ in resumed.broken] == ["broken.png"]
    assert sorted(read_metadata_csv(images / "metadata.csv")) == sorted(GOOD)
    assert [e.file for e in seen if e.error] == ["broken.png"]


def test_output_and_arguments_are_checked_before_any_model_loads(images, tmp_path):
    def refuse(options):
        raise AssertionError("the model must not be loaded")

    registry = CaptionerRegistry([CaptionerSpec("never", "loads nothing", refuse)])
    run = dict(backend="never", backends=registry)
    with pytest.raises(CaptionError, match="does not exist"):
        caption_folder(str(images), output=str(tmp_path / "missing" / "metadata.csv"), **run)
    with pytest.raises(CaptionError, match="is a folder"):
        caption_folder(str(images), output=str(tmp_path), **run)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CaptionError, match="does not exist"):
        caption_folder(str(images), output=str(blocker / "metadata.csv"), **run)
    with pytest.raises(CaptionError, match="leave out --output"):
        caption_folder(str(images), output=str(tmp_path / "x.csv"), fmt="txt", **run)
    with pytest.raises(CaptionError, match="not a folder"):
        caption_folder(str(tmp_path / "nope"), **run)
    with pytest.raises(CaptionError, match="unknown caption backend 'nope'; known: never"):
        caption_folder(str(images), backend="nope", backends=registry)
    with pytest.raises(CaptionError, match="unknown caption format"):
        caption_folder(str(images), fmt="json", **run)
    # nothing left to caption (every good image captioned, the broken one cannot load): no model either
    for rel in GOOD:
        (images / rel).with_suffix(".txt").write_text("done")
    result = caption_folder(str(images), **run)
    assert result.captioned == 0 and result.skipped == 4 and len(result.broken) == 1


def test_model_sources_fail_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    cases = [(str(tmp_path / "empty"), "no config.json"), (str(tmp_path / "weights.bin"), "is a file"),
             (str(tmp_path / "no" / "such"), "does not exist"),
             ("someone/not-in-the-cache", "pass --model with a local folder")]
    for source, expected in cases:
        with pytest.raises(ModelLoadError, match=expected) as info:
            resolve_model_folder(source, "BLIP model")
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("prefix, caption, expected", [
    ("sks, ", "a dog", "sks, a dog"),
    ("sks,", "a dog", "sks, a dog"),
    ("sks", "a dog", "sks a dog"),
    ("sks, ", "sks, a dog", "sks, a dog"),  # already there: not added twice
    ("sks, ", "sks a dog", "sks a dog"),
    ("sks, ", "", "sks"),
    ("", "a dog", "a dog"),
    ("  ", "a dog", "a dog"),
])
def test_apply_prefix(prefix, caption, expected):
    assert apply_prefix(prefix, caption) == expected


# ------------------------------------------------------------------------------------------ acceptance 2
def test_rank_tags_picks_the_phrase_closest_by_construction():
    cats = [Category("colour", ["red tones", "blue tones", "green tones"], 1),
            Category("style", ["sketchy", "realistic", "abstract", "noir"], 2)]
    text = torch.eye(8)[:7]  # phrase i points along axis i
    image = torch.zeros(3, 8)
    image[0, [1, 4, 6]] = torch.tensor([1.0, 0.8, 0.799])  # blue; realistic and noir about equally close
    image[1, [0, 5]] = 1.0  # red, abstract
    image[2, 7] = 1.0  # orthogonal to every phrase: uniform shares
    image = image / image.norm(dim=-1, keepdim=True)
    tags = rank_tags(image, text, cats, scale=100.0, threshold=0.3)
    assert tags[0] == ["blue tones", "realistic", "noir"]
    assert tags[1] == ["red tones", "abstract"]  # the second style falls below the threshold
    assert tags[2] == ["red tones"]  # 1/3 of the colour share passes 0.3; 1/4 of style does not
    assert rank_tags(image[2:], text, cats, scale=100.0, threshold=0.5) == [[]]


def test_clip_tagger_ranks_crafted_embeddings_through_the_real_path(images, clip_dir, tmp_path):
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "medium.txt").write_text("a photograph\na painting\n")
    (vocab / "colour.txt").write_text("# comment\nred tones\nblue tones\ngreen tones\n")
    axis = {"red tones": 0, "blue tones": 1, "green tones": 2, "a photograph": 3, "a painting": 4}
    by_colour = {(220, 30, 30): ["red tones", "a photograph"], (30, 60, 220): ["blue tones", "a painting"]}

    def crafted_texts(texts):
        return torch.stack([torch.eye(8)[axis[t]] for t in texts])

    def crafted_images(imgs):
        rows = []
        for img in imgs:
            row = torch.zeros(8)
            for phrase in by_colour.get(img.getpixel((0, 0)), []):
                row[axis[phrase]] = 1.0
            row[7] = 0.0 if row.any() else 1.0  # other colours: orthogonal to every phrase
            rows.append(row / row.norm())
        return torch.stack(rows)

    def build(options):
        tagger = ClipTagger(replace(options, vocab_dir=str(vocab)))
        tagger.embed_texts = crafted_texts  # only the embedding step is replaced; ranking is the real code
        tagger.embed_images = crafted_images
        return tagger

    registry = CaptionerRegistry([CaptionerSpec("crafted", "test", build)])
    result = caption_folder(str(images), backend="crafted", model=str(clip_dir), tag_threshold=0.6,
                            backends=registry, batch_size=8, **FAST)
    assert result.captions["0_red.png"] == "a photograph, red tones"  # medium comes before colour
    assert result.captions["2_blue.png"] == "a painting, blue tones"
    assert result.captions["1_green.png"] == ""  # nothing clearly closest: no tag


def test_shipped_vocabulary():
    cats = load_vocabulary()
    assert [c.name for c in cats] == ["subject", "medium", "style", "lighting", "colour", "composition"]
    assert {c.name: c.top for c in cats}["style"] == 2
    for cat in cats:
        assert len(cat.phrases) >= 15 and len(set(cat.phrases)) == len(cat.phrases)
        assert all(p == p.strip() and not p.startswith("#") for p in cat.phrases)
    assert len(all_phrases(cats)) == sum(len(c.phrases) for c in cats)


# ------------------------------------------------------------------------------------------ acceptance 3
def _recording_registry(refs: list) -> CaptionerRegistry:
    def build(options):
        captioner = build_blip_clip(options)
        refs.extend(weakref.ref(obj) for obj in [captioner] + [p.model for p in captioner.parts])
        return captioner

    return CaptionerRegistry([CaptionerSpec("recorded", "test", build)])


def test_models_are_released_after_a_run_on_cpu(images, blip_dir, clip_dir):
    refs: list = []
    result = caption_folder(str(images), backend="recorded", model=str(blip_dir), clip_model=str(clip_dir),
                            backends=_recording_registry(refs), batch_size=8, **FAST)
    assert result.captioned == 4 and len(refs) == 3
    gc.collect()
    assert [r() is None for r in refs] == [True, True, True]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_memory_returns_to_its_value_before_the_run(images, blip_dir, clip_dir, tmp_path):
    def run(output, peak=None):
        refs: list = []
        result = caption_folder(str(images), str(output), backend="recorded", model=str(blip_dir),
                                clip_model=str(clip_dir), backends=_recording_registry(refs), batch_size=8,
                                max_new_tokens=5, num_beams=1, device="cuda",
                                progress=(lambda e: peak.append(torch.cuda.memory_allocated())) if peak is not None
                                else None)
        torch.cuda.synchronize()
        return result, refs

    # a first run lets CUDA libraries create their per-process workspaces (cuBLAS/cuBLASLt keep them in
    # torch's allocator for the life of the process); the second run is the one measured
    run(tmp_path / "warm.csv")
    before = torch.cuda.memory_allocated()
    peak: list = []
    result, refs = run(tmp_path / "measured.csv", peak)
    assert result.captioned == 4
    assert max(peak) > before  # the models were on the GPU during the run
    assert torch.cuda.memory_allocated() == before
    assert all(r() is None for r in refs)


# ------------------------------------------------------------------------------------------ WebUI backends
class FakeState:
    """Mimics modules.shared_state.State.begin/end: they reset the fields our progress bar reads."""

    def __init__(self):
        self.job, self.job_count, self.job_no, self.textinfo = "", 0, 0, None
        self.interrupted = False
        self.time_start = None

    def begin(self, job="(unknown)"):
        self.job, self.job_count, self.job_no, self.textinfo = job, -1, 0, None
        self.interrupted = False
        self.time_start = 0.0

    def end(self):
        self.job, self.job_count = "", 0


@pytest.fixture
def fake_webui(monkeypatch):
    state = FakeState()
    calls = {"interrogate": 0, "unload": 0, "start": 0, "stop": 0, "tag": 0}

    class Interrogator:
        def interrogate(self, image):
            state.begin(job="interrogate")
            calls["interrogate"] += 1
            if calls["interrogate"] == 2:
                state.interrupted = True  # the user presses Interrupt during the second image
            r, g, b = image.getpixel((0, 0))
            state.end()
            return "<error>" if (r, g, b) == (30, 200, 60) else f"a photo, r{r}"

        def unload(self):
            calls["unload"] += 1
            state.begin()
            state.end()

    class DeepBooru:
        def start(self):
            calls["start"] += 1

        def tag_multi(self, image):
            calls["tag"] += 1
            state.textinfo = "deepbooru"
            return "1girl, solo"

        def stop(self):
            calls["stop"] += 1

    modules = types.ModuleType("modules")
    shared = types.ModuleType("modules.shared")
    shared.state, shared.interrogator = state, Interrogator()
    deepbooru = types.ModuleType("modules.deepbooru")
    deepbooru.model = DeepBooru()
    modules.shared, modules.deepbooru = shared, deepbooru
    for name, mod in [("modules", modules), ("modules.shared", shared), ("modules.deepbooru", deepbooru)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return state, calls


def _our_job(state, seen):
    """A progress callback like the WebUI tab's: it owns shared.state's job fields during our run."""
    state.job, state.job_count = "lora_trainer_caption", 5

    def progress(event):
        seen.append((state.job, state.job_count, state.job_no))  # what the interrogator left behind
        state.job_no, state.textinfo = event.done, f"captioned {event.file}"

    return progress


def test_webui_backends_need_the_webui():
    assert [s.name for s in default_captioners().available()] == ["blip", "clip-tags", "blip+clip-tags"]
    with pytest.raises(CaptionError, match="runs only inside the AUTOMATIC1111 WebUI"):
        default_captioners().get("webui-interrogator")


def test_webui_interrogator_keeps_our_progress_and_the_interrupt(images, fake_webui):
    state, calls = fake_webui
    seen: list = []
    result = caption_folder(str(images), backend="webui-interrogator", batch_size=1,
                            progress=_our_job(state, seen), should_stop=lambda: state.interrupted)
    assert calls["interrogate"] == 2 and calls["unload"] == 1  # stopped after the Interrupt, then unloaded
    assert result.stopped and result.captions == {"0_red.png": "a photo, r220"}
    assert [p.name for p, _ in result.broken] == ["1_green.png"]  # "<error>" from the WebUI: skipped
    assert seen and all(s[:2] == ("lora_trainer_caption", 5) for s in seen)
    assert state.job == "lora_trainer_caption" and state.job_count == 5 and state.interrupted


def test_webui_deepbooru_starts_once_and_keeps_our_progress(images, fake_webui):
    state, calls = fake_webui
    seen: list = []
    result = caption_folder(str(images), fmt="txt", backend="webui-deepbooru", batch_size=2,
                            progress=_our_job(state, seen))
    assert result.captioned == 4 and calls == dict(calls, start=1, stop=1, tag=4)
    assert (images / "0_red.txt").read_text() == "1girl, solo"
    assert state.textinfo == "captioned sub/3_yellow.png"  # not the tagger's "deepbooru"


def test_preserved_state_restores_fields_and_keeps_a_new_interrupt():
    state = FakeState()
    state.job, state.job_count, state.job_no = "ours", 10, 3
    with preserved_state(state):
        state.begin("theirs")
        state.interrupted = True
        state.end()
    assert (state.job, state.job_count, state.job_no, state.interrupted) == ("ours", 10, 3, True)
    state.interrupted = True
    with preserved_state(state):
        state.begin("theirs")  # clears the flag set before: it comes back
    assert state.interrupted
