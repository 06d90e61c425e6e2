"""Folder datasets: three layouts, bad files reported and skipped, empty folders refused."""

import json

import pytest
import torch
from PIL import Image

from studio.ml.datasets import collate, open_dataset
from studio.ml.folder import FolderDatasetError


def _png(path, colour=(200, 10, 10), size=(40, 30)):
    Image.new("RGB", size, colour).save(path)


def test_pairs_with_bad_files_are_skipped_with_a_warning(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red thing\n")
    _png(tmp_path / "b.png", (10, 10, 200))
    (tmp_path / "b.txt").write_text("a  blue\nthing")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "broken.txt").write_text("broken")
    _png(tmp_path / "nocaption.png")
    _png(tmp_path / "empty.png")
    (tmp_path / "empty.txt").write_text("  ")
    with pytest.warns(UserWarning) as record:
        data = open_dataset(f"folder:{tmp_path}", size=32)
    messages = " ".join(str(w.message) for w in record)
    for name in ("broken.png", "nocaption.png", "empty.txt"):
        assert name in messages
    assert len(data) == 2
    item = data[1]
    assert item["caption"] == "a blue thing" and item["attrs"] is None
    assert item["image"].shape == (3, 32, 32)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["image"][2].mean() > 0.5  # blue channel high
    batch = collate([data[0], data[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["caption"][0] == "a red thing"


def test_jsonl_layout(tmp_path):
    _png(tmp_path / "x.png")
    lines = [json.dumps({"file": "x.png", "caption": "ok"}), "{not json", json.dumps({"file": "missing.png", "caption": "m"})]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines))
    with pytest.warns(UserWarning) as record:
        data = open_dataset(f"folder:{tmp_path}")
    messages = [str(w.message) for w in record]
    assert any("captions.jsonl:2" in m for m in messages) and any("missing.png" in m for m in messages)
    assert len(data) == 1 and data[0]["caption"] == "ok"


def test_csv_layout(tmp_path):
    _png(tmp_path / "x.png")
    _png(tmp_path / "y.png")
    (tmp_path / "captions.csv").write_text('file,caption\nx.png,"a red, square thing"\ny.png,\n')
    with pytest.warns(UserWarning, match="captions.csv:3"):
        data = open_dataset(f"folder:{tmp_path}")
    assert [data[0]["caption"]] == ["a red, square thing"]


def test_an_image_that_breaks_later_is_replaced(tmp_path):
    for name in ("a", "b"):
        _png(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(name)
    data = open_dataset(f"folder:{tmp_path}")
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="a.png"):
        assert data[0]["caption"] == "b"


@pytest.mark.parametrize("setup", ["missing", "empty", "only_bad"])
def test_unusable_folders_raise_one_line_errors(tmp_path, setup):
    folder = tmp_path / "data"
    if setup != "missing":
        folder.mkdir()
    if setup == "only_bad":
        (folder / "bad.png").write_bytes(b"x")
        (folder / "bad.txt").write_text("x")
    with pytest.warns(UserWarning) if setup == "only_bad" else _no_warning():
        with pytest.raises(FolderDatasetError) as info:
            open_dataset(f"folder:{folder}")
    assert isinstance(info.value, ValueError)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        open_dataset("nope")


def test_shapes_items():
    data = open_dataset("shapes", size=32, seed=1)
    item = data[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["attrs"]["canvas"] == 32 and item["caption"] == data[3]["caption"]
    assert item["attrs"]["claim"]["objects"]


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
