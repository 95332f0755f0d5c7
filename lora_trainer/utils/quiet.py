"""Library chatter a user cannot act on (deprecations, optional packages not installed, loading bars)
stays off the console of our own entry points: the CLI and the standalone page. Never called inside the
WebUI, whose console and warning filters belong to the WebUI."""
from __future__ import annotations

import os
import warnings

LIBRARIES = r"(torch|torchvision|diffusers|transformers|peft|accelerate|huggingface_hub|safetensors|PIL|gradio|" \
            r"gradio_client|tensorboard|numpy|tqdm|pydantic|fastapi|starlette|uvicorn|httpx)(\.|$)"


def quiet_libraries() -> None:
    """Set before the libraries are imported: their loggers at error level, their warnings ignored."""
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(name, "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tensorboard's optional TensorFlow
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", module=LIBRARIES)
