"""The caption editor (lora_trainer.data.editor): every write goes back where the caption is read from."""
from __future__ import annotations

from pathlib import Path

import pytest

from lora_trainer.data import editor
from lora_trainer.data.captions import read_metadata_csv
from lora_trainer.data.scan import scan_dataset
from lora_trainer.errors import DatasetError
from tiny_data import make_color_dataset


def _captions(root: Path, **kw) -> dict:
    return {r.rel: r.caption for r in scan_dataset(str(root), require_captions=False, **kw).records}


def test_csv_caption_is_saved_to_its_row_and_other_columns_are_kept(tmp_path):
    root = make_color_dataset(tmp_path / "d", n=3, captions="csv")
    (root / "metadata.csv").write_text("file_name,text,score\n0_red.png,a red image,5\n1_green.png,a green image,3\n",
                                       encoding="utf-8")
    place = editor.save_caption(root, "0_red.png", "  crimson square  ")
    assert place.kind == "csv" and place.key == "0_red.png"
    text = (root / "metadata.csv").read_text(encoding="utf-8")
    assert text.splitlines() == ["file_name,text,score", "0_red.png,crimson square,5", "1_green.png,a green image,3"]
    # 2_blue.png has no row and no sidecar: the folder uses a CSV, so it gets a new row
    assert editor.save_caption(root, "2_blue.png", "navy").kind == "csv"
    assert read_metadata_csv(root / "metadata.csv")["2_blue.png"] == "navy"
    assert _captions(root)["2_blue.png"] == "navy"


def test_sidecar_caption_is_saved_to_its_sidecar(tmp_path):
    root = make_color_dataset(tmp_path / "d", n=2, captions="txt")
    (root / "1_green.txt").rename(root / "1_green.caption")
    assert editor.save_caption(root, "0_red.png", "scarlet").path == root / "0_red.txt"
    place = editor.save_caption(root, "1_green.png", "lime", caption_extension=".txt")
    assert place.path == root / "1_green.caption"  # the existing sidecar, not a new .txt beside it
    assert not (root / "1_green.txt").exists()
    assert _captions(root) == {"0_red.png": "scarlet", "1_green.png": "lime"}


def test_csv_row_by_bare_name_in_a_subfolder(tmp_path):
    root = tmp_path / "d"
    make_color_dataset(root / "5_sks", n=1, captions="none")
    (root / "metadata.csv").write_text("file_name,text\n0_red.png,old\n", encoding="utf-8")
    assert editor.read_captions(root)["5_sks/0_red.png"] == ("old", "csv")
    place = editor.save_caption(root, "5_sks/0_red.png", "new")
    assert place.key == "0_red.png"
    assert read_metadata_csv(root / "metadata.csv") == {"0_red.png": "new"}


def test_new_caption_without_csv_becomes_a_sidecar(tmp_path):
    root = tmp_path / "d"
    make_color_dataset(root / "3_thing", n=1, captions="none")
    assert editor.read_captions(root) == {"3_thing/0_red.png": ("thing", "folder")}
    place = editor.save_caption(root, "3_thing/0_red.png", "a thing", caption_extension=".caption")
    assert place.path == root / "3_thing" / "0_red.caption"
    assert editor.read_captions(root, caption_extension=".caption")["3_thing/0_red.png"] == ("a thing", "sidecar")


def test_bulk_trigger_and_find_replace(tmp_path):
    root = make_color_dataset(tmp_path / "d", n=3, captions="csv")
    current = {rel: text for rel, (text, _) in editor.read_captions(root).items()}
    current["0_red.png"] = "sks, a red image"
    changed = editor.with_trigger(current, " sks ")
    assert set(changed) == {"1_green.png", "2_blue.png"}  # the first already starts with it
    assert changed["1_green.png"] == "sks, a green image"
    editor.save_captions(root, changed)
    assert _captions(root)["2_blue.png"] == "sks, a blue image"

    swapped = editor.replaced(_captions(root), "image", "picture")
    assert swapped == {"0_red.png": "a red picture", "1_green.png": "sks, a green picture",
                       "2_blue.png": "sks, a blue picture"}
    with pytest.raises(DatasetError):
        editor.replaced(current, "", "x")
    with pytest.raises(DatasetError):
        editor.with_trigger(current, " , ")


def test_saving_an_unknown_image_is_refused(tmp_path):
    root = make_color_dataset(tmp_path / "d", n=1)
    with pytest.raises(DatasetError, match="scan the folder again"):
        editor.save_caption(root, "gone.png", "x")


def test_caption_store(tmp_path):
    assert editor.caption_store(make_color_dataset(tmp_path / "a", n=1, captions="csv")) == "csv"
    assert editor.caption_store(make_color_dataset(tmp_path / "b", n=1, captions="txt")) == "txt"
    assert editor.caption_store(make_color_dataset(tmp_path / "c", n=1, captions="none")) == "csv"
