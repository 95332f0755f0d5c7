"""Where a running WebUI keeps the user's prompts: its image output folders (txt2img, img2img; or the one
folder all images go to) and its styles file(s). The prompt assistant offers these as defaults."""
from __future__ import annotations

import os
from typing import List, Tuple

OUTPUT_OPTIONS = ("outdir_txt2img_samples", "outdir_img2img_samples")


def webui_prompt_sources() -> Tuple[List[str], List[str]]:
    """(image folders that exist, styles files that exist), as absolute paths."""
    from modules import paths, shared

    def absolute(path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(paths.script_path, path)

    opts = shared.opts
    everything = getattr(opts, "outdir_samples", "")  # when set, every image goes there
    chosen = [everything] if everything else [getattr(opts, key, "") for key in OUTPUT_OPTIONS]
    folders = [absolute(f) for f in chosen if f]
    styles = getattr(shared, "styles_filename", None) or []
    styles = [styles] if isinstance(styles, str) else list(styles)
    return ([f for f in folders if os.path.isdir(f)],
            [absolute(s) for s in styles if os.path.isfile(absolute(s))])
