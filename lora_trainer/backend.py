"""What the trainer's page needs from the place it runs in. The page (lora_trainer/ui) talks only to a
`TrainerBackend`; `StandaloneBackend` trains a base model from a path, `lora_trainer.webui.backend`
trains the WebUI's loaded checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .config import TrainConfig, config_from_dict
from .data.editor import caption_store
from .errors import DatasetError, LoraTrainerError
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
        """Validate the page's values into a TrainConfig (raises ConfigError naming the key).

        An empty output_dir becomes `default_output_dir(output_name)`."""
        raw = dict(raw)
        if not raw.get("output_dir"):
            raw["output_dir"] = self.default_output_dir(raw.get("output_name") or "my_lora")
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

    # ------------------------------------------------------------------ captioning
    def captioners(self) -> List[str]:
        """Names of the auto-captioning backends that can run here."""
        from .caption import default_backends

        return [spec.name for spec in default_backends().available()]

    def run_captioner(self, folder: str, name: str, prefix: str = "", overwrite: bool = False,
                      progress: Optional[Callable[[Any], None]] = None, model: Optional[str] = None) -> str:
        """Caption the images of `folder` with backend `name`, where the folder keeps its captions
        (metadata.csv, or .txt sidecars when it already uses them); returns a one-line summary."""
        from .caption import caption_folder

        if not folder or not Path(folder).is_dir():
            raise DatasetError(f"{folder!r} is not a folder of images: enter the dataset folder first")
        result = caption_folder(folder, fmt=caption_store(Path(folder)), backend=name, model=model or None,
                                prefix=prefix, overwrite=overwrite, progress=progress)
        parts = [f"{result.captioned} image(s) captioned with {name}", f"{result.skipped} already had a caption"]
        if result.broken:
            parts.append(f"{len(result.broken)} could not be captioned")
        if result.stopped:
            parts.append("stopped early")
        return "; ".join(parts + list(result.notes))

    def prompt_text(self, name: str, weight: float, trigger: str = "") -> str:
        """The text to paste into a prompt: `<lora:name:weight>` plus the trigger word."""
        text = f"<lora:{name}:{weight:g}>"
        return f"{trigger}, {text}" if trigger else text


class StandaloneBackend(TrainerBackend):
    """`python -m lora_trainer ui`: trains a base model given by path; runs go to `output_root/<name>`."""

    def __init__(self, output_root: str = "output", jobs: Optional[JobManager] = None):
        super().__init__(jobs)
        self.output_root = Path(output_root)

    def default_output_dir(self, name: str) -> str:
        return str((self.output_root / name).resolve())

    def results_folders(self) -> List[Path]:
        """The last run's folder, then every run folder under output_root."""
        folders = super().results_folders()
        if self.output_root.is_dir():
            folders += sorted(p for p in self.output_root.iterdir() if p.is_dir())
        return folders
