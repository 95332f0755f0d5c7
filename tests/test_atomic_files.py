"""Atomic writes: a failed write leaves the earlier file alone; saved safetensors files are reproducible."""
import hashlib
import random

import pytest
import torch
from safetensors import safe_open

from lora_trainer.utils.atomic import atomic_save_safetensors, atomic_write_with


def test_same_tensors_and_metadata_give_the_same_bytes(tmp_path):
    """safetensors writes metadata in hash-map order; the saved header is sorted, so equal content = equal sha256."""
    tensors = {f"lora_unet_block_{i}.lora_down.weight": torch.randn(4, 8) for i in range(20)}
    metadata = {f"ss_key_{i}": f"value {i} é" for i in range(40)}
    digests = set()
    for n in range(5):
        keys = list(metadata)
        random.Random(n).shuffle(keys)
        path = atomic_save_safetensors(tmp_path / f"lora{n}.safetensors", tensors, {k: metadata[k] for k in keys})
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
        with safe_open(str(path), "pt") as fh:  # the rewritten header still reads back exactly
            assert fh.metadata() == metadata
            assert all(torch.equal(fh.get_tensor(k), v) for k, v in tensors.items())
    assert len(digests) == 1


def test_a_failed_write_keeps_the_earlier_file(tmp_path):
    target = atomic_save_safetensors(tmp_path / "lora.safetensors", {"a": torch.ones(2)}, {"ss_x": "1"})
    before = target.read_bytes()

    def broken_writer(tmp):
        tmp.write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write_with(target, broken_writer)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]  # no temp file left behind
