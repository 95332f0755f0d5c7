"""What each job kind does: a function (service, job, progress writer) -> result dict.

Training runs through the service's JobManager runner (the host's GPU queue) and train function (the
host's in-place training); the other kinds call the service's own methods, which already take the
host's queue where they need the GPU. A result may carry `_state` ("cancelled", "interrupted") when the
job ended early but cleanly.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict

from ..errors import ConfigError

Service = Any  # a service.TrainerService (not imported: the service imports this package)
if TYPE_CHECKING:
    from .progress import ProgressWriter
    from .store import Job

Executor = Callable[[Service, "Job", "ProgressWriter"], Dict[str, Any]]


def _need(config: Dict[str, Any], key: str) -> Any:
    if config.get(key) in (None, "", []):
        raise ConfigError(f"config error: {key}: missing (the job needs it)")
    return config[key]


def run_train(service: Service, job: "Job", writer: "ProgressWriter") -> Dict[str, Any]:
    """Train the job's config; a resumed job continues its run's saved state exactly (resume: true)."""
    from ..engine.checkpoint import state_path
    from .progress import TrainRecorder

    raw = dict(job.config)
    if job.resume:
        state = state_path(Path(_need(raw, "output_dir")), True)
        if state.exists():
            raw["resume"] = True
        else:  # stopped before its first save: nothing to continue, start the run again
            raw["overwrite"] = True
    config = service.make_config(raw)
    service.check_before_start(config)
    recorder = TrainRecorder(writer)
    manager = service.jobs
    result = manager.runner(lambda: manager.train_fn(config, [recorder]))
    out: Dict[str, Any] = {"lora_path": str(result.lora_path), "steps": int(result.steps)}
    if getattr(result, "stopped_early", False):
        out["_state"] = "cancelled" if writer.stop_requested() else "interrupted"
    return out


def run_caption(service: Service, job: "Job", writer: "ProgressWriter") -> Dict[str, Any]:
    c = job.config
    summary = service.run_captioner(_need(c, "folder"), _need(c, "captioner"), c.get("prefix", ""),
                                    bool(c.get("overwrite", False)),
                                    progress=lambda p: writer.update(p.done, p.total), model=c.get("model"))
    return {"summary": summary}


def run_merge(service: Service, job: "Job", writer: "ProgressWriter") -> Dict[str, Any]:
    c = job.config
    result = service.merge_into_checkpoint(_need(c, "lora"), float(c.get("weight", 1.0)), c.get("out_name", ""),
                                           bool(c.get("overwrite", False)))
    return {"path": str(result.path), "family": result.family}


def run_combine(service: Service, job: "Job", writer: "ProgressWriter") -> Dict[str, Any]:
    from ..tools import combine_loras
    from ..tools.files import parse_lora_arg

    c = job.config
    loras = [parse_lora_arg(str(x)) for x in _need(c, "loras")]
    out = Path(_need(c, "out"))
    service.check_may_write(out)
    result = combine_loras(loras, out, rank=c.get("rank"), overwrite=bool(c.get("overwrite", False)))
    return {"path": str(result.path)}


def run_resize(service: Service, job: "Job", writer: "ProgressWriter") -> Dict[str, Any]:
    c = job.config
    result = service.resize(_need(c, "lora"), int(_need(c, "rank")), bool(c.get("overwrite", False)))
    return {"path": str(result.path), "error": result.error}


def run_grid(service: Service, job: "Job", writer: "ProgressWriter") -> Dict[str, Any]:
    c = job.config
    path = service.grid(_need(c, "loras"), _need(c, "prompt"), [float(w) for w in _need(c, "weights")],
                        seed=int(c.get("seed", 0)), size=int(c.get("size", 512)), steps=int(c.get("steps", 20)),
                        cfg=float(c.get("cfg", 7.0)), negative=c.get("negative", ""))
    return {"path": str(path)}


EXECUTORS: Dict[str, Executor] = {"train": run_train, "caption": run_caption, "merge": run_merge,
                                  "combine": run_combine, "resize": run_resize, "grid": run_grid}
