"""The world the bad-input tests run in (tests/test_bad_inputs.py: the CLI; tests/test_bad_inputs_api.py: the
page backend and the HTTP API): a model, a dataset and a finished earlier run that no case may change, and
the checks that nothing else was written."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict

import yaml

from conftest import make_config


def make_world(tmp_path_factory, tiny_model_dir) -> Dict[str, Path]:
    """Shared, never to be changed by any case: the model, a dataset and a finished earlier run."""
    from lora_trainer.engine.run import train
    from tiny_data import make_color_dataset

    root = tmp_path_factory.mktemp("world")
    data = make_color_dataset(root / "data", n=4)
    earlier = root / "earlier"
    train(make_config(tiny_model_dir, data, earlier, max_steps=2, save_steps=1, output_name="earlier"))
    return {"root": root, "model": tiny_model_dir, "data": data, "earlier": earlier}


def tree_hashes(*folders: Path) -> Dict[Path, str]:
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file() and p.name != ".lora_trainer.lock":  # the lock records who holds it: not a result
                out[p] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class W:
    """Paths of one case: `tmp` is its own folder (configs, prepared data); `out` its expected output folder."""

    def __init__(self, world: Dict[str, Path], tmp: Path):
        self.model, self.data, self.earlier = world["model"], world["data"], world["earlier"]
        self.tmp = tmp
        self.out = tmp / "out"

    def raw(self, **changes) -> dict:
        raw = make_config(self.model, self.data, self.out, max_steps=2).to_dict()
        raw.update(changes)
        return raw

    def cfg(self, **changes) -> str:
        path = self.tmp / "cfg.yaml"
        path.write_text(yaml.safe_dump(self.raw(**changes)), encoding="utf-8")
        return str(path)

    def text_cfg(self, text: str, name: str = "cfg.yaml", data: bytes = b"") -> str:
        path = self.tmp / name
        path.write_bytes(data or text.encode("utf-8"))
        return str(path)

    def data_with(self, name: str, content: bytes) -> Path:
        """A copy of the dataset plus one more file."""
        folder = self.tmp / "data"
        folder.mkdir(exist_ok=True)
        for p in self.data.iterdir():
            (folder / p.name).write_bytes(p.read_bytes())
        (folder / name).write_bytes(content)
        return folder


def only_file(w: W, name: str, content: bytes) -> Path:
    folder = w.tmp / "only"
    folder.mkdir()
    (folder / name).write_bytes(content)
    return folder


def assert_nothing_else_written(before: Dict[Path, str], after: Dict[Path, str], allowed: Path) -> None:
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"an earlier file changed or vanished: {changed}"
    new = [p for p in after if p not in before and allowed not in p.parents and p.name != ".lora_trainer.lock"]
    assert not new, f"written outside the output folder: {new}"
