"""The contract of a host, the program the trainer runs inside: `Host`.

A host says whether it is the one running (`detect`), where things go (`lora_dir`, `checkpoint_dir`,
`workspace`), which model is loaded and the bundle that trains it in place (`bundle`), how a job runs
(`run_job` through its queue, `train` with its progress bar and Interrupt), how its LoRA list is
cleared and re-read (`clear_loras`, `refresh_loras`, `refresh_checkpoints`), how a file is checked
with its own loader (`verify_lora`), how grids are rendered (`render_grid`), and how the extension
hooks into it (`register_extension`). Only host modules import the host's own code (`modules.*`).

The defaults below are a plain Python process's answers (no queue, no Lora list); a host overrides
what differs. A new host is one file with a `Host` subclass plus one line in `hosts/__init__.py`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from ..errors import LoraTrainerError

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..events import Callback
    from ..models.bundle import ModelBundle


class Host(ABC):
    """A place the trainer runs in; see the module docstring."""

    name: str = ""  # "a1111"
    title: str = ""  # "AUTOMATIC1111 WebUI"
    in_webui: bool = True  # it trains the model the host has loaded, and has a Lora folder

    @abstractmethod
    def detect(self) -> bool:
        """Whether this process runs inside this host (cheap; imports nothing heavy)."""

    # ------------------------------------------------------------------ folders
    @abstractmethod
    def workspace(self) -> Path:
        """Where training runs (checkpoints, logs, samples) go by default."""

    def output_dir_anywhere(self) -> bool:
        """Whether a request may name any output_dir (a WebUI may listen on a network: by default only
        folders inside the workspace)."""
        return False

    def lora_dir(self) -> Optional[Path]:
        """The host's LoRA folder (finished LoRAs are installed there), or None."""
        return None

    def checkpoint_dir(self) -> Optional[Path]:
        """The host's checkpoint folder (merged checkpoints are written there), or None."""
        return None

    # ------------------------------------------------------------------ the loaded model
    def loaded_checkpoint(self) -> Path:
        """The file of the checkpoint the host has loaded."""
        raise LoraTrainerError(f"{self.title or 'this program'} has no loaded checkpoint")

    def model_description(self) -> str:
        """One line about the model training will use ('' when the user gives a base model path)."""
        return ""

    def bundle(self) -> "ModelBundle":
        """A bundle that trains the host's loaded model in place."""
        raise LoraTrainerError(f"{self.title or 'this program'} has no loaded model to train in place")

    def model_digest(self) -> Dict[str, Any]:
        """sha256 and sizes of the loaded model's weights (utils/weights_digest), to prove training gave them back."""
        raise LoraTrainerError(f"{self.title or 'this program'} has no loaded model")

    def fill_config(self, raw: Dict[str, Any]) -> Dict[str, Any]:
        """The page's raw config with what the host decides (its loaded model, its default settings)."""
        return raw

    # ------------------------------------------------------------------ jobs
    def run_job(self, body: Callable[[], Any]) -> Any:
        """Run `body` the way the host runs long GPU work (its queue); returns its result, raises its error."""
        return body()

    def train(self, config: "TrainConfig", callbacks: Sequence["Callback"]):
        """Train `config` (called inside `run_job`); returns the engine's TrainResult."""
        from ..engine.run import train  # the engine loads torch: not at import, the page must start fast

        return train(config, callbacks)

    # ------------------------------------------------------------------ the host's LoRA list
    def clear_loras(self) -> None:
        """Deactivate every LoRA the host has applied to the loaded model."""

    def refresh_loras(self, name: str) -> None:
        """Re-read the LoRA folder, forgetting any cached copy of LoRA `name`."""

    def refresh_checkpoints(self) -> None:
        """Re-read the checkpoint folder (after a merge wrote a checkpoint there)."""

    def verify_lora(self, name: str) -> Dict[str, Any]:
        """Load LoRA `name` with the host's own loader and compare its modules with the file's."""
        raise LoraTrainerError(f"{self.title or 'this program'} has no LoRA loader to verify {name!r} with")

    def render_grid(self, names: Sequence[str], prompt: str, weights: Sequence[float], seed: int, size: int,
                    steps: int, cfg: float, negative: str):
        """A GridResult of LoRAs `names` (from the host's list) x `weights`, rendered by the host."""
        raise LoraTrainerError(f"{self.title or 'this program'} cannot render grids itself")

    # ------------------------------------------------------------------ the extension
    def register_extension(self) -> None:
        """Hook the trainer into the host: its tab, settings and HTTP routes."""
        raise LoraTrainerError(f"LoRA Trainer does not know how to add itself to {self.title or 'this program'}")


class HostRegistry:
    """An ordered list of hosts; the first whose `detect()` is true is the one running."""

    def __init__(self, hosts: Sequence[Host]):
        self.hosts: List[Host] = []
        for host in hosts:
            if any(h.name == host.name for h in self.hosts):
                raise ValueError(f"host {host.name!r} registered twice")
            self.hosts.append(host)

    def detect(self) -> Host:
        for host in self.hosts:
            if host.detect():
                return host
        raise LoraTrainerError(f"no host detected (known: {', '.join(h.name for h in self.hosts)})")

    def get(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LoraTrainerError(f"unknown host {name!r}; known: {', '.join(h.name for h in self.hosts)}")
