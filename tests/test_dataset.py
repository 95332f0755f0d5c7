"""Dataset pipeline: folder conventions, robust image loading, buckets, repeats, the dataset report."""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_trainer.data.buckets import BucketSettings, bucket_for, resize_plan
from lora_trainer.data.captions import apply_trigger, shuffle_tags
from lora_trainer.data.dataset import CaptionSettings, TrainingSet, image_to_tensor
from lora_trainer.data.doctor import build_report
from lora_trainer.data.images import load_rgb
from lora_trainer.data.scan import scan_dataset
from lora_trainer.utils.seeding import py_random

SIZES = [(64, 64), (128, 64), (64, 128), (200, 120), (90, 160), (300, 300), (256, 100), (77, 333)]


def _img(path: Path, size, colour=(120, 60, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    path.with_suffix(".txt").write_text(f"an image {size[0]}x{size[1]}")
    return path


def test_every_bucket_keeps_aspect_ratio_within_one_step():
    s = BucketSettings(resolution=128, step=16, min_side=32, max_side=256)
    for w in range(40, 600, 23):
        for h in range(40, 600, 31):
            bw, bh = bucket_for(w, h, s)
            assert bw % 16 == 0 and bh % 16 == 0 and bw * bh <= 128 * 128
            (rw, rh), (left, top) = resize_plan(w, h, (bw, bh))
            if s.min_side <= bw < s.max_side and s.min_side <= bh < s.max_side:
                # the covering resize crops less than one step from one side only
                assert 0 <= rw - bw < 16 and 0 <= rh - bh < 16 and min(rw - bw, rh - bh) == 0, (w, h, bw, bh)


def test_no_upscale_never_enlarges():
    s = BucketSettings(resolution=512, step=64, min_side=64, max_side=1024, no_upscale=True)
    for w, h in [(100, 700), (300, 200), (640, 640), (1000, 90), (2048, 1024)]:
        bw, bh = bucket_for(w, h, s)
        assert bw <= max(w, 64) and bh <= max(h, 64)
        (rw, rh), _ = resize_plan(w, h, (bw, bh))
        assert rw <= max(w, 64) and rh <= max(h, 64)


def test_batches_come_from_one_bucket_and_repeats_multiply(tmp_path):
    root = tmp_path / "d"
    for i, size in enumerate(SIZES):
        _img(root / f"img{i}.png", size)
    for i, size in enumerate(SIZES[:3]):
        _img(root / "3_sks dog" / f"rep{i}.png", size)
    Image.new("RGB", (64, 64)).save(root / "3_sks dog" / "nocap.png")  # caption from the folder name
    scan = scan_dataset(str(root))
    ds = TrainingSet(scan, BucketSettings(resolution=128, step=32, min_side=32, max_side=256), CaptionSettings())
    for epoch in range(3):
        batches = ds.epoch_batches(epoch, seed=1, batch_size=3)
        uses = Counter()
        for batch in batches:
            assert len({ds.buckets[s.index] for s in batch}) == 1
            uses.update(s.index for s in batch)
        for i, r in enumerate(ds.records):
            assert uses[i] == r.repeats == (3 if r.subset == "3_sks dog" else 1)
    nocap = next(r for r in ds.records if r.rel.endswith("nocap.png"))
    assert nocap.caption == "sks dog" and nocap.caption_source == "folder"
    # deterministic order per (seed, epoch)
    assert [[s.index for s in b] for b in ds.epoch_batches(2, 1, 3)] == \
           [[s.index for s in b] for b in ds.epoch_batches(2, 1, 3)]


def test_caption_precedence_and_augmentation(tmp_path):
    root = tmp_path / "d"
    _img(root / "a.png", (64, 64))
    (root / "a.txt").write_text("from txt")
    _img(root / "b.png", (64, 64))
    (root / "b.txt").unlink()
    (root / "b.caption").write_text("from caption file")
    _img(root / "c.png", (64, 64))
    (root / "metadata.csv").write_text("filename,prompt\nc.png,from csv\n")
    recs = {r.rel: r for r in scan_dataset(str(root)).records}
    assert recs["a.png"].caption == "from txt"
    assert recs["b.png"].caption == "from caption file"
    assert recs["c.png"].caption == "from csv" and recs["c.png"].caption_source == "csv"
    assert apply_trigger("red, dog", "sks") == "sks, red, dog"
    assert apply_trigger("sks, red", "sks") == "sks, red"
    rng = py_random(0, "t")
    tags = "keep, a, b, c, d, e, f"
    shuffled = {shuffle_tags(tags, rng, keep_tokens=1) for _ in range(20)}
    assert all(s.startswith("keep, ") for s in shuffled) and len(shuffled) > 1


def _broken_dataset(root: Path) -> dict:
    """Good and bad images as users have them; returns which is which."""
    root.mkdir(parents=True)
    good = {}
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (10, 200, 30)).save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.png").write_text("this is not an image")
    arr16 = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(arr16).save(root / "deep16.png")
    good["deep16.png"] = (64, 64)
    Image.new("CMYK", (80, 64), (0, 128, 255, 0)).save(root / "cmyk.jpg")
    good["cmyk.jpg"] = (80, 64)
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(root / "transparent.png")
    good["transparent.png"] = (64, 64)
    rotated = Image.new("RGB", (128, 64), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    rotated.save(root / "rotated.jpg", exif=exif)
    good["rotated.jpg"] = (64, 128)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "dup_a.png")
    (root / "dup_b.png").write_bytes((root / "dup_a.png").read_bytes())
    good["dup_a.png"] = good["dup_b.png"] = (64, 64)
    Image.new("P", (64, 64), 3).save(root / "palette.png")
    good["palette.png"] = (64, 64)
    for name in list(good) + ["truncated.jpg", "empty.png", "notes.png"]:
        (root / name).with_suffix(".txt").write_text(f"photo of {name}")
    return good


def test_odd_images_load_as_rgb_and_broken_ones_are_named(tmp_path):
    good = _broken_dataset(tmp_path / "d")
    scan = scan_dataset(str(tmp_path / "d"))
    assert {r.rel: (r.width, r.height) for r in scan.records} == good
    assert sorted(p.name for p, _ in scan.broken) == ["empty.png", "notes.png", "truncated.jpg"]
    for r in scan.records:
        img = load_rgb(r.path)
        assert img.mode == "RGB"
    transparent = np.asarray(load_rgb(tmp_path / "d" / "transparent.png"))
    assert transparent.min() == 255  # fully transparent red composited on white
    deep = np.asarray(load_rgb(tmp_path / "d" / "deep16.png"))
    assert deep.max() == 255 and deep.min() == 0


def test_report_names_broken_files_and_duplicates(tmp_path):
    good = _broken_dataset(tmp_path / "d")
    scan = scan_dataset(str(tmp_path / "d"))
    ds = TrainingSet(scan, BucketSettings(resolution=64, step=64, min_side=64, max_side=128), CaptionSettings())
    report = build_report(ds, batch_size=1, grad_accum=1, broken=scan.broken)
    text = "\n".join(report.lines())
    for name in ("truncated.jpg", "empty.png", "notes.png"):
        assert name in text
    assert ("dup_a.png", "dup_b.png") in report.exact_duplicates
    assert report.can_train and report.num_images == len(good) == 7


def test_image_to_tensor_crops_to_the_bucket():
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    t = image_to_tensor(img, (128, 64))
    assert tuple(t.shape) == (3, 64, 128) and float(t[0].min()) == 1.0 and float(t[1].max()) == -1.0
    flipped = image_to_tensor(Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))), (64, 64), flip=True)
    assert float(flipped[0, 0, 0]) > float(flipped[0, 0, -1])


@pytest.mark.parametrize("with_trigger", [False, True])
def test_check_command_exit_codes(tmp_path, capsys, with_trigger):
    import yaml

    from lora_trainer.cli import main

    root = tmp_path / "d"
    _img(root / "ok.png", (64, 64))
    Image.new("RGB", (64, 64)).save(root / "uncaptioned.png")
    cfg = {"train_data_dir": str(root), "base_model": str(tmp_path / "none"), "output_dir": str(tmp_path / "o"),
           "resolution": 64}
    if with_trigger:
        cfg["trigger_word"] = "zzq"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["check", "--config", str(tmp_path / "c.yaml")])
    out = capsys.readouterr()
    if with_trigger:
        assert code == 0 and "ready to train" in out.out
    else:
        assert code == 1 and "uncaptioned.png" in out.err
