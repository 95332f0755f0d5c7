"""A digest of a model's weights: proof that training in place gave every byte back."""
from __future__ import annotations

import hashlib
from typing import Any, Dict, Mapping


def weights_digest(parts: Mapping[str, Any]) -> Dict[str, Any]:
    """sha256 over the names and raw bytes of every tensor in each part's state dict (in name order), and
    each part's size in bytes: {"sha256": ..., "bytes": {part: n}}."""
    import torch

    h = hashlib.sha256()
    sizes: Dict[str, int] = {}
    with torch.no_grad():
        for part, module in parts.items():
            total = 0
            for name, t in sorted(module.state_dict().items()):
                raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                h.update(f"{part}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(raw.numpy().tobytes())
                total += raw.numel()
            sizes[part] = total
    return {"sha256": h.hexdigest(), "bytes": sizes}
