"""Reading a .safetensors file with ordinary reads, one tensor at a time, straight into its memory.

`safetensors.torch.load_file` maps the file and copies each tensor out of the mapping; until it returns, the
mapped pages it touched count in the process's memory beside the copies, so loading a 4 GB checkpoint
needed up to 8 GB (SD1.5 fp32 single file: peak RSS 6.1 GiB while loading, 4.4 GiB once loaded). Read with
`readinto`, the file's bytes go into each tensor once and the page cache stays the kernel's.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, BinaryIO, Dict, Tuple, Union

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):  # newer torch only
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)


def _read_header(fh: BinaryIO) -> Tuple[Dict[str, Any], int]:
    """(header, offset of the tensor data) of an open file."""
    (length,) = struct.unpack("<Q", fh.read(8))
    return json.loads(fh.read(length)), 8 + length


def read_header(path: Union[str, Path]) -> Dict[str, Any]:
    """The file's JSON header (tensor entries and `__metadata__`); raises OSError/ValueError/struct.error."""
    with open(path, "rb") as fh:
        return _read_header(fh)[0]


def read_tensors(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Every tensor of the file, on the CPU; raises ValueError for a dtype or size the header gets wrong."""
    with open(path, "rb") as fh:
        header, data_start = _read_header(fh)
        tensors = {}
        for name, entry in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                                  key=lambda item: item[1]["data_offsets"][0]):
            if entry["dtype"] not in DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {entry['dtype']} which this torch cannot hold")
            tensor = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
            start, end = entry["data_offsets"]
            target = memoryview(tensor.view(-1).view(torch.uint8).numpy()) if tensor.numel() else memoryview(b"")
            if end - start != len(target):
                raise ValueError(f"tensor {name!r}: {end - start} bytes in the file for {len(target)} expected")
            fh.seek(data_start + start)
            if len(target) and fh.readinto(target) != len(target):
                raise ValueError(f"tensor {name!r} is cut short (the file ends early)")
            tensors[name] = tensor
    return tensors
