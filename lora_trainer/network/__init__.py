"""The adapter network on a model: which layers get adapters (targets), their kohya names (kohya_names,
unet_paths, checkpoint_keys) and the layers themselves (network, packed_attention)."""
