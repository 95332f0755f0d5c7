"""What the trainer's page (lora_trainer/ui) and the HTTP routes can ask for: a `TrainerService`.

`TrainerService` holds the standalone behaviour and `StandaloneService` adds its run folders: both train
a base model given by path. `HostedService` is the page inside a host WebUI (hosts/): it trains the
host's loaded checkpoint through the host's queue and puts results into the host's folders, asking the
host for everything that differs, so one class serves every host.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from .config import TrainConfig, config_from_dict
from .data.editor import caption_store
from .engine.preflight import preflight
from .errors import ConfigError, DatasetError, LoraTrainerError, ModelLoadError
from .jobs import JobBusy, JobManager, JobStatus, list_loras
from .utils.names import name_problem

if TYPE_CHECKING:
    from .hosts.base import Host
    from .tools import MergeResult, ResizeResult

MERGED_FOLDER = "merged"  # standalone: merged checkpoints go to <run folder>/merged/ (not listed as LoRAs)


class TrainerService:
    """Standalone behaviour; `HostedService` overrides what differs inside a host."""

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

    def check_may_write(self, path: Path) -> None:
        """Raise unless the page may write `path` (standalone: anywhere the user can)."""

    def start(self, config: TrainConfig) -> JobStatus:
        """Start a training job, after the checks that would otherwise fail it at once (no images, an unusable
        model path, an output folder that is busy, full or holds an earlier run): those raise here, so the
        page and the API refuse the request instead of accepting a job that fails. A running job is named
        first: its own folder lock would otherwise answer as if another process held the folder."""
        self.jobs.refuse_if_busy()
        self.check_before_start(config)
        return self.jobs.start(config)

    def check_before_start(self, config: TrainConfig) -> None:
        preflight(config, check_model=self.needs_base_model_path())

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
        from .caption import default_captioners

        return [spec.name for spec in default_captioners().available()]

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

    # ------------------------------------------------------------------ the Results section's tools
    def check_idle(self, what: str) -> None:
        """Refuse work that needs the model or the GPU queue while a training job runs."""
        s = self.jobs.status()
        if s.active:
            raise JobBusy(f"cannot {what} while {s.name} is training (step {s.step}/{s.total_steps}): wait for it "
                          f"to finish, or press Stop and save")

    def grid_rows(self, lora_path: str) -> List[str]:
        """The LoRAs a grid of one result shows: its run's step checkpoints in order, then the LoRA."""
        from .grid import run_checkpoints

        return [str(p) for p in run_checkpoints(Path(lora_path))]

    def grid(self, loras: Sequence[str], prompt: str, weights: Sequence[float], seed: int = 0, size: int = 512,
             steps: int = 20, cfg: float = 7.0, negative: str = "") -> Path:
        """Render rows = `loras` x columns = `weights` with the base model of the run (its config.yaml) and
        save the PNG beside the first LoRA; returns its path."""
        from .grid import check_grid_request, grid_to_file, new_grid_path

        check_grid_request(loras, prompt, weights)
        self.check_idle("render a grid")
        paths = [Path(p) for p in loras]
        out, _ = grid_to_file(paths, prompt, weights, out=new_grid_path(paths[0].parent), seed=seed, size=size,
                              steps=steps, cfg=cfg, negative=negative)
        return out

    def resize(self, lora_path: str, rank: int, overwrite: bool = False) -> "ResizeResult":
        """`<name>_r<rank>.safetensors` beside the LoRA (card sidecars copied); the result has the errors."""
        from .tools import resize_beside

        return resize_beside(Path(lora_path), int(rank), overwrite=overwrite)

    def merge_into_checkpoint(self, lora_path: str, weight: float, out_name: str = "",
                              overwrite: bool = False) -> "MergeResult":
        """Bake the LoRA at `weight` into `merge_base(lora)`, written as `out_name` (empty: `<base>-<LoRA>`)
        into `checkpoint_folder(lora)`; the result has the path and the numbers."""
        from .tools import merge_loras

        lora = Path(lora_path)
        if not math.isfinite(float(weight)):
            raise LoraTrainerError(f"merge weight {weight!r} is not a finite number")
        base = self.merge_base(lora)
        name = checkpoint_file_name(out_name, f"{base.stem}-{lora.stem}")
        return merge_loras(base, [(lora, float(weight))], self.checkpoint_folder(lora) / name, overwrite=overwrite)

    def merge_base(self, lora: Path) -> Path:
        """Standalone: the single-file checkpoint the LoRA was trained on (its run's config.yaml)."""
        from .grid import base_model_of

        base = base_model_of(lora.parent)
        if not base:
            raise ModelLoadError(f"no config.yaml with base_model beside {lora.name}: merge it with the CLI "
                                 f"instead: python -m lora_trainer merge --base CHECKPOINT --lora {lora}")
        if Path(base).is_dir():
            raise ModelLoadError(f"{lora.name} was trained on {base}, a diffusers folder; merging needs a single-file "
                                 f"checkpoint (.safetensors or .ckpt) of that model: python -m lora_trainer merge "
                                 f"--base CHECKPOINT --lora {lora}")
        return Path(base)

    def checkpoint_folder(self, lora: Path) -> Path:
        """Standalone: `<run folder>/merged/`, so the checkpoint is not mistaken for a LoRA of the run."""
        return lora.parent / MERGED_FOLDER


def checkpoint_file_name(text: Optional[str], default: str) -> str:
    """A checkpoint file name from the page's box: `name` -> `name.safetensors`; empty -> `default`."""
    name = (text or "").strip()
    if name.lower().endswith(".safetensors"):
        name = name[:-len(".safetensors")]
    name = name or default
    problem = name_problem(name)
    if problem:
        raise LoraTrainerError(f"checkpoint name {text!r}: {problem}; give a plain file name without folders, "
                               f"e.g. {default}")
    return f"{name}.safetensors"


class StandaloneService(TrainerService):
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


class HostedService(TrainerService):
    """The page inside a host WebUI: trains the loaded checkpoint; results go to the host's Lora folder."""

    in_webui = True

    def __init__(self, host: "Host") -> None:
        super().__init__(JobManager(runner=host.run_job, train_fn=host.train))
        self.host = host

    def model_description(self) -> str:
        return self.host.model_description()

    def default_output_dir(self, name: str) -> str:
        return str(self.host.workspace() / name)

    def results_folders(self) -> List[Path]:
        return [self.host.lora_dir()]

    def run_captioner(self, *args, **kwargs) -> str:
        """Caption through the host's queue, so captioning never overlaps txt2img or training."""
        return self.host.run_job(lambda: TrainerService.run_captioner(self, *args, **kwargs))

    # ------------------------------------------------------------------ the Results section's tools
    def grid_rows(self, lora_path: str) -> List[str]:
        """The Lora folder holds finished LoRAs only (checkpoints stay in the workspace): the LoRA itself."""
        return [lora_path]

    def grid(self, loras: Sequence[str], prompt: str, weights: Sequence[float], seed: int = 0, size: int = 512,
             steps: int = 20, cfg: float = 7.0, negative: str = "") -> Path:
        """The grid rendered by the host (`<lora:name:weight>` in its txt2img), saved in `<workspace>/grids/`."""
        from .grid import check_grid_request, new_grid_path, save_grid

        check_grid_request(loras, prompt, weights)
        self.check_idle("render a grid")
        names = [Path(p).stem for p in loras]
        out = new_grid_path(self.host.workspace() / "grids")
        return self.host.run_job(lambda: save_grid(self.host.render_grid(names, prompt, weights, seed, size, steps,
                                                                         cfg, negative), out))

    def resize(self, lora_path: str, rank: int, overwrite: bool = False) -> "ResizeResult":
        result = TrainerService.resize(self, lora_path, rank, overwrite)
        self.host.refresh_loras(result.path.stem)
        return result

    def merge_into_checkpoint(self, lora_path: str, weight: float, out_name: str = "",
                              overwrite: bool = False) -> "MergeResult":
        """Into the loaded checkpoint, written to the host's checkpoint folder, whose list is then re-read.
        Through the host's queue: it reads and writes files of gigabytes."""
        self.check_idle("merge into a checkpoint")

        def body():
            result = TrainerService.merge_into_checkpoint(self, lora_path, weight, out_name, overwrite)
            self.host.refresh_checkpoints()
            return result

        return self.host.run_job(body)

    def merge_base(self, lora: Path) -> Path:
        return self.host.loaded_checkpoint()

    def checkpoint_folder(self, lora: Path) -> Path:
        return self.host.checkpoint_dir()

    def check_may_write(self, path: Path) -> None:
        if not self.host.output_dir_anywhere():
            check_inside_workspace(str(path), self.host.workspace(), "config file")

    def make_config(self, raw: Dict[str, Any]) -> TrainConfig:
        """The host's loaded model and settings. A relative output_dir is taken inside the workspace, and an
        absolute one must be there too unless the host allows any (the page and the API may be reached from
        a network)."""
        raw = self.host.fill_config(raw)
        if raw.get("output_dir"):
            raw["output_dir"] = str(self.host.workspace().expanduser() / Path(str(raw["output_dir"])).expanduser())
            if not self.host.output_dir_anywhere():
                check_inside_workspace(raw["output_dir"], self.host.workspace())
        return TrainerService.make_config(self, raw)


def check_inside_workspace(path: str, workspace: Path, key: str = "output_dir") -> None:
    """Refuse a path outside `workspace` (links and `..` resolved), naming `key` and the fix."""
    resolved, root = Path(path).resolve(), workspace.expanduser().resolve()
    if resolved == root or root in resolved.parents:
        return
    fix = (f"leave output_dir empty (runs go to {root}/<output_name>)" if key == "output_dir" else
           f"leave the path empty (the file goes into the run's folder) or give one inside {root}")
    raise ConfigError(f"config error: {key}: {path!r} is outside the trainer's folder for runs ({root}); {fix}, "
                      f"or allow any folder in Settings > LoRA Trainer")
