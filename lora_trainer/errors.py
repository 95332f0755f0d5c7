"""Errors a user can act on. Each says what was found, what was expected and what to do."""
from __future__ import annotations


class LoraTrainerError(Exception):
    """Base class for errors shown to the user as one line (no traceback)."""

    exit_code = 1


class ConfigError(LoraTrainerError):
    """A config key or value is wrong; raised before anything is loaded."""

    exit_code = 2


class DatasetError(LoraTrainerError):
    """The training images or captions cannot be used."""


class ModelLoadError(LoraTrainerError):
    """The base model cannot be found or understood."""


class CaptionError(LoraTrainerError):
    """Auto-captioning cannot start or go on (bad folder, unwritable output, unknown backend)."""


class LoraFormatError(LoraTrainerError):
    """A LoRA file does not fit the model or cannot be read."""


class TrainingStopped(LoraTrainerError):
    """Training stopped on purpose (non-finite losses, out of memory) after saving what it could."""
