"""The record for AUTOMATIC1111's extension index (repo stable-diffusion-webui-extensions, branch
`extensions`, one JSON file per extension under `extensions/`), checked by the rules the index's own
validation applies: required keys, tags from its tag list, an ISO `added` date, a git https URL, and a
name and description the Extensions tab shows (short, one line)."""
from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "extension-index" / "lora-trainer.json"
# tags.json of the index (its extension_template.json lists the same)
INDEX_TAGS = {"script", "localization", "tab", "dropdown", "ads", "training", "models", "UI related", "prompting",
              "editing", "manipulations", "online", "animation", "query", "science", "extras"}


def test_the_extension_index_record_is_valid():
    record = json.loads(RECORD.read_text(encoding="utf-8"))
    assert set(record) == {"name", "url", "description", "tags", "added"}
    assert all(isinstance(record[k], str) and record[k].strip() for k in ("name", "url", "description", "added"))
    assert re.fullmatch(r"https://github\.com/[A-Za-z0-9-]+/[A-Za-z0-9._-]+\.git", record["url"])
    datetime.date.fromisoformat(record["added"])
    assert record["tags"] and set(record["tags"]) <= INDEX_TAGS and len(set(record["tags"])) == len(record["tags"])
    assert {"tab", "training"} <= set(record["tags"])  # it adds a tab and it trains
    assert "\n" not in record["description"] and len(record["description"]) <= 250


def test_the_readme_install_section_points_at_the_record():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## In the AUTOMATIC1111 WebUI", 1)[1].split("\n## ", 1)[0]
    assert "extension-index/lora-trainer.json" in section
