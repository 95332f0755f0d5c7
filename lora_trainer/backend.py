"""What the trainer's page needs from the place it runs in. The page (lora_trainer/ui) talks only to a
`TrainerBackend`; `StandaloneBackend` trains a base model from a path, `lora_trainer.webui.backend`
trains the WebUI's loaded checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from .config import TrainConfig, config_from_dict
from .jobs import JobManager, JobStatus, list_loras


class TrainerBackend:
    """Standalone behaviour; the WebUI backend overrides what differs there."""

    in_webui = False

    def __init__(self, jobs: Optional[JobManager] = None, results_dir: Optional[str] = None):
        self.jobs = jobs or JobManager()
        self._results_dir = results_dir

    # ------------------------------------------------------------------ model and paths
    def model_description(self) -> str:
        """Shown in the Model section ('' standalone: the page shows a base model path box instead)."""
        return ""

    def needs_base_model_path(self) -> bool:
        return not self.in_webui

    def default_output_dir(self, name: str) -> str:
        return str(Path("output") / name)

    def results_folders(self) -> List[Path]:
        """Folders whose LoRAs the Results section lists."""
        folders = []
        if self._results_dir:
            folders.append(Path(self._results_dir))
        last = self.jobs.status().lora_path
        if last:
            folders.append(Path(last).parent)
        return folders

    # ------------------------------------------------------------------ jobs
    def make_config(self, raw: Dict[str, Any]) -> TrainConfig:
        """Validate the page's values into a TrainConfig (raises ConfigError naming the key)."""
        return config_from_dict(raw)

    def start(self, config: TrainConfig) -> JobStatus:
        return self.jobs.start(config)

    def stop(self) -> JobStatus:
        return self.jobs.stop()

    def status(self) -> JobStatus:
        return self.jobs.status()

    def list_results(self) -> List[Dict[str, Any]]:
        seen, out = set(), []
        for folder in self.results_folders():
            for item in list_loras(folder) if folder.is_dir() else []:
                if item["path"] not in seen:
                    seen.add(item["path"])
                    out.append(item)
        return out

    def prompt_text(self, name: str, weight: float, trigger: str = "") -> str:
        """The text to paste into a prompt: `<lora:name:weight>` plus the trigger word."""
        text = f"<lora:{name}:{weight:g}>"
        return f"{trigger}, {text}" if trigger else text


class StandaloneBackend(TrainerBackend):
    """`python -m lora_trainer ui`: trains a base model given by path."""
