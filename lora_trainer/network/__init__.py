"""LoRA layers (peft) on a bundle's modules, kohya naming, and conversion to/from kohya tensors."""
