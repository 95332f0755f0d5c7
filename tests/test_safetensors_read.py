"""Reading checkpoints without a file mapping (utils/safetensors_read): the same tensors as safetensors'
own reader, and a clear error for a damaged file."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_trainer.errors import ModelLoadError
from lora_trainer.models.loading import read_state_dict, safetensors_shapes
from lora_trainer.utils.safetensors_read import read_header, read_tensors


def _tensors():
    torch.manual_seed(0)
    return {"a.weight": torch.randn(5, 3), "b.half": torch.randn(4, 2).half(), "c.bf16": torch.randn(7).bfloat16(),
            "d.steps": torch.arange(6, dtype=torch.int64).view(2, 3), "e.mask": torch.tensor([True, False]),
            "f.scalar": torch.tensor(2.5), "g.empty": torch.zeros(0, 3), "h.bytes": torch.arange(9, dtype=torch.uint8)}


def test_the_tensors_read_equal_those_of_safetensors_own_reader(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(_tensors(), str(path), metadata={"ss_note": "x"})
    ours, theirs = read_tensors(path), load_file(str(path))
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape and torch.equal(ours[key], value)
    assert read_header(path)["__metadata__"] == {"ss_note": "x"}
    assert safetensors_shapes(path) == {k: tuple(v.shape) for k, v in theirs.items()}
    assert read_state_dict(path).keys() == theirs.keys()


def test_a_cut_short_checkpoint_is_refused_with_its_name(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="cut short"):
        read_tensors(path)
    with pytest.raises(ModelLoadError, match="cut.safetensors"):
        read_state_dict(path)
