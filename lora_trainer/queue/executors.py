"""What each job kind does: a function (service, job, progress writer) -> result dict.

Training runs through the service's JobManager (the host's GPU queue and in-place training, the Run
section's status); the other kinds call the service's own methods, which already take the
host's queue where they need the GPU. A result may carry `_state` ("cancelled", "interrupted") when the
job ended early but cleanly.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from ..errors import ConfigError, LoraTrainerError

Service = Any  # a service.TrainerService (not imported: the service imports this package)
if TYPE_CHECKING:
    from .progress import ProgressWriter
    from .store import Job

Executor = Callable[[Service, "Job", "ProgressWriter"], Dict[str, Any]]


def _need(config: Dict[str, Any], key: str) -> Any:
    if config.get(key) in (None, "", []):
        raise ConfigError(f"config error: {key}: missing (the job needs it)")
    return config[key]


def train_config(service: Service, job: "Job") -> Any:
    """The job's TrainConfig; a resumed job continues its run's saved state exactly (resume: true)."""
    from ..engine.checkpoint import state_path

    raw = dict(job.config)
    if job.resume:
        state = state_path(Path(_need(raw, "output_dir")), True)
        if state.exists():
            raw["resume"] = True
        else:  # stopped before its first save: nothing to continue, start the run again
            raw["overwrite"] = True
    return service.make_config(raw)


def train_outcome(status: Any, writer: "ProgressWriter") -> Tuple[str, Dict[str, Any], Optional[str]]:
    """(state, result, error) of a training from the JobManager's last status: a stop asked by the user
    (Stop, or Cancel in the queue) is `cancelled`, one the host asked for (Interrupt) `interrupted`."""
    result: Dict[str, Any] = {"lora_path": status.lora_path, "steps": int(status.step)} if status.lora_path else {}
    if status.state == "failed":
        return "failed", result, status.error or "the training failed"
    if status.state == "stopped":
        return ("cancelled" if status.stop_requested or writer.stop_requested() else "interrupted"), result, None
    return "done", result, None


def run_train(service: Service, job: "Job", writer: "ProgressWriter") -> Dict[str, Any]:
    """Train the job's config through the service's JobManager (the host's GPU queue and in-place training),
    so the Run section shows it as it shows a training started with Start; waits for its end."""
    from .progress import TrainRecorder

    config = train_config(service, job)
    service.check_before_start(config)
    service.jobs.start(config, [TrainRecorder(writer)])
    state, result, error = train_outcome(service.jobs.wait(), writer)
    if state == "failed":
        raise LoraTrainerError(error)
    return {**result, "_state": state}


def run_text(service: Service, job: "Job", writer: "ProgressWriter") -> Dict[str, Any]:
    """Train a text-model LoRA (`task: text`, the prompt assistant's run) through the JobManager, as a training."""
    from ..text.config import text_config_from_dict
    from ..text.run import train_text
    from .progress import TrainRecorder

    service.jobs.start(text_config_from_dict(dict(job.config)), [TrainRecorder(writer)], train_fn=train_text)
    state, result, error = train_outcome(service.jobs.wait(), writer)
    if state == "failed":
        raise LoraTrainerError(error)
    return {**result, "_state": state}


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
                                  "combine": run_combine, "resize": run_resize, "grid": run_grid, "text": run_text}
