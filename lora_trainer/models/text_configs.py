"""The text towers of the released models as transformers CLIPTextConfig values, and the config of an original
(ldm-style) config's text encoder: what the families and `architecture` build text encoders from."""
from __future__ import annotations

from typing import Any, Dict, Optional

from .family import nested_get

# The text towers of the released models, in transformers' CLIPTextConfig terms.
CLIP_L: Dict[str, Any] = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                              projection_dim=768)
# SD2's OpenCLIP ViT-H/14 as diffusers stores it: the last of its 24 layers is not used (penultimate layer)
OPEN_CLIP_H_PENULTIMATE: Dict[str, Any] = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                               num_hidden_layers=23, num_attention_heads=16,
                                               max_position_embeddings=77, hidden_act="gelu", projection_dim=1024)
OPEN_CLIP_BIGG: Dict[str, Any] = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                      num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                                      projection_dim=1280)


def text_config(base: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None):
    """A CLIPTextConfig: `base` with the original config's `text_config` overrides (tiny test models)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**{**base, **(overrides or {})})


def clip_text_config(original: Dict[str, Any]):
    """The CLIP text config of an SD1/SD2-style original config (its `text_config` override, else CLIP ViT-L/14)."""
    return text_config(CLIP_L, nested_get(original, "model", "params", "cond_stage_config", "params", "text_config",
                                          default={}))
