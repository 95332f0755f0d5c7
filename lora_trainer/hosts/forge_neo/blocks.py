"""Forward passes without in-place additions for Forge Neo's UNet blocks, while training.

Forge's `BasicTransformerBlock` adds each branch into its input in place (`x += n`, `x += x_skip`) and its
`ResBlock` scales and shifts in place with scale-shift norms (`h *= 1 + scale; h += shift`); autograd
refuses both once the overwritten tensor was saved for the backward pass (a LayerNorm saves its input).
`BlockForwards(unet)` gives each such block an instance forward (models/layer_forwards): without gradients
it is the block's own class forward, unchanged (Forge's patches, ControlNet and all); with gradients it
computes the same sums out of place. Blocks are recognised by their attributes (the layout of
`backend.nn.unet`), so nothing here imports Forge. `remove()` gives each block its class forward back.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from ...errors import LoraTrainerError
from ...models.layer_forwards import LayerForward, LayerForwards

TRANSFORMER_PARTS = ("attn1", "attn2", "norm1", "norm2", "norm3", "ff")
RESBLOCK_PARTS = ("in_layers", "out_layers", "skip_connection")
UNSUPPORTED_OPTIONS = ("patches", "patches_replace", "group_norm_wrapper")


def is_transformer_block(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in TRANSFORMER_PARTS)


def is_resblock(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in RESBLOCK_PARTS)


def _check_options(options: Optional[Dict[str, Any]]) -> None:
    used = [k for k in UNSUPPORTED_OPTIONS if (options or {}).get(k)]
    if used:
        raise LoraTrainerError(f"Forge's UNet has model patches active while training ({', '.join(used)}): turn off "
                               f"the extensions that add them (ControlNet, FreeU, ...) and start training again")


class BlockForward(LayerForward):
    """A block's class forward without gradients; `train_forward` (checkpointed when asked) with them."""

    checkpointed = False

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return type(self.module).forward(self.module, x, *args, **kwargs)
        _check_options(kwargs.get("transformer_options", args[-1] if args and isinstance(args[-1], dict) else None))
        if self.checkpointed:
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self.train_forward, x, *args, use_reentrant=False, **kwargs)
        return self.train_forward(x, *args, **kwargs)

    def train_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError


class TransformerBlockForward(BlockForward):
    """BasicTransformerBlock: self-attention, cross-attention and feed-forward, each added out of place."""

    def train_forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                      transformer_options: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        block = self.module
        options = dict(transformer_options or {})
        if getattr(block, "ff_in", False):
            skip = x
            x = block.ff_in(block.norm_in(x))
            x = x + skip if block.is_res else x
        self_context = context if getattr(block, "disable_self_attn", False) else None
        n = block.attn1(block.norm1(x), context=self_context, transformer_options=options)
        x = x + n
        if block.attn2 is not None:
            n = block.attn2(block.norm2(x), context=context, transformer_options=options)
        x = x + n  # Forge adds the last branch again when there is no cross-attention; so do we
        skip = x if getattr(block, "is_res", True) else None
        x = block.ff(block.norm3(x))
        return x + skip if skip is not None else x


class ResBlockForward(BlockForward):
    """ResBlock: in-layers, timestep embedding (added, or scale-shifted), out-layers, skip; all out of place."""

    def train_forward(self, x: torch.Tensor, emb: torch.Tensor,
                      transformer_options: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        block = self.module
        if getattr(block, "updown", False):
            rest, conv = block.in_layers[:-1], block.in_layers[-1]
            h = conv(block.h_upd(rest(x)))
            x = block.x_upd(x)
        else:
            h = block.in_layers(x)
        emb_out = None
        if not getattr(block, "skip_t_emb", False) and block.emb_layers is not None:
            emb_out = block.emb_layers(emb).type(h.dtype)
            while emb_out.dim() < h.dim():
                emb_out = emb_out[..., None]
        if getattr(block, "use_scale_shift_norm", False):
            h = block.out_layers[0](h)
            if emb_out is not None:
                scale, shift = torch.chunk(emb_out, 2, dim=1)
                h = h * (1 + scale) + shift
            h = block.out_layers[1:](h)
        else:
            if emb_out is not None:
                if getattr(block, "exchange_temb_dims", False):
                    emb_out = emb_out.transpose(1, 2)
                h = h + emb_out
            h = block.out_layers(h)
        return block.skip_connection(x) + h


class BlockForwards:
    """Out-of-place forwards on every transformer block and ResBlock of a UNet, until `remove()`."""

    def __init__(self, unet: nn.Module):
        self.parts = [LayerForwards(unet, TransformerBlockForward, is_transformer_block),
                      LayerForwards(unet, ResBlockForward, is_resblock)]

    def checkpoint(self) -> None:
        """Activation checkpointing on every block from now on (undone by `remove()`)."""
        for part in self.parts:
            for layer in part.layers:
                layer.checkpointed = True

    def __len__(self) -> int:
        return sum(len(p.layers) for p in self.parts)

    def remove(self) -> None:
        for part in self.parts:
            part.remove()
