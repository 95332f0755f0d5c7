"""The captioner contract and the captioner registry.

A captioner (what `--backend` names) is one file with a `Captioner` subclass and a `CaptionerSpec` naming it; adding one is that file
plus one line in `caption/__init__.py` (`default_captioners`). The runner only talks to this interface.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence

from PIL import Image

from ..errors import CaptionError


@dataclass(frozen=True)
class CaptionOptions:
    """What a backend may need to build itself. Each backend reads the fields it uses."""

    model: Optional[str] = None  # the backend's model: a local folder, or a hub id found offline
    clip_model: Optional[str] = None  # the CLIP model of a backend that also ranks tags (blip+clip-tags)
    device: str = "cpu"  # a resolved torch device string ("cpu", "cuda", "cuda:1", "mps")
    max_new_tokens: int = 40  # BLIP: longest caption, in tokens
    num_beams: int = 3  # BLIP: beam search width (1 = greedy)
    tag_threshold: float = 0.2  # CLIP tags: keep a phrase when its share within its category is at least this
    vocab_dir: Optional[str] = None  # CLIP tags: a folder of <category>[.topN].txt phrase lists


class Captioner:
    """Captions images. Built once per run (models loaded in the constructor), closed at the end."""

    def caption(self, images: Sequence[Image.Image]) -> List[Optional[str]]:
        """One caption per image, in order; None for an image this backend could not caption."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop every reference to models and tensors so that their memory can be freed."""


@dataclass(frozen=True)
class CaptionerSpec:
    """A named way to build a captioner."""

    name: str  # what `--backend` takes
    help: str  # one line for `--help` and the UI
    build: Callable[[CaptionOptions], Captioner]
    # None when the backend can run here, else why not (e.g. "runs only inside the WebUI")
    unavailable_reason: Callable[[], Optional[str]] = lambda: None


class CaptionerRegistry:
    """An ordered set of backends; names are unique."""

    def __init__(self, specs: Iterable[CaptionerSpec]):
        self.specs: List[CaptionerSpec] = []
        for spec in specs:
            if any(s.name == spec.name for s in self.specs):
                raise ValueError(f"caption backend {spec.name!r} registered twice")
            self.specs.append(spec)

    def names(self) -> List[str]:
        return [s.name for s in self.specs]

    def available(self) -> List[CaptionerSpec]:
        """The backends that can run in this process."""
        return [s for s in self.specs if s.unavailable_reason() is None]

    def get(self, name: str) -> CaptionerSpec:
        """The backend called `name`; a CaptionError naming the choices when it is unknown or cannot run here."""
        for spec in self.specs:
            if spec.name == name:
                reason = spec.unavailable_reason()
                if reason:
                    raise CaptionError(f"caption backend {name!r} {reason}; available here: "
                                       f"{', '.join(s.name for s in self.available())}")
                return spec
        raise CaptionError(f"unknown caption backend {name!r}; known: {', '.join(self.names())}")


class JoinedCaptioner(Captioner):
    """Several captioners in turn; their non-empty outputs are joined with ', ' (e.g. BLIP then CLIP tags)."""

    def __init__(self, parts: Sequence[Captioner]):
        self.parts: List[Captioner] = list(parts)

    def caption(self, images: Sequence[Image.Image]) -> List[Optional[str]]:
        per_part = [part.caption(images) for part in self.parts]
        out: List[Optional[str]] = []
        for texts in zip(*per_part):
            if any(t is None for t in texts):
                out.append(None)
            else:
                out.append(", ".join(t for t in texts if t))
        return out

    def close(self) -> None:
        for part in self.parts:
            part.close()
        self.parts = []


def build_joined(builders: Sequence[Callable[[], Captioner]]) -> JoinedCaptioner:
    """Build captioners in order; if one fails, close those already built before re-raising."""
    built: List[Captioner] = []
    try:
        for build in builders:
            built.append(build())
    except BaseException:
        for captioner in built:
            captioner.close()
        raise
    return JoinedCaptioner(built)
