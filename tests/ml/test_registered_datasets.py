"""Datasets come from the plugin registry: a dataset a plugin registers is trainable by every trainer."""

import pytest

torch = pytest.importorskip("torch")

from studio.errors import UnknownDataset  # noqa: E402
from studio.ml.datasets import open_dataset  # noqa: E402

pytestmark = pytest.mark.usefixtures("testgen_installed")


def test_open_dataset_takes_a_plugins_dataset_from_the_registry(monkeypatch):
    monkeypatch.setenv("STUDIO_LOAD_PLUGINS", "testgen")
    data = open_dataset("testgen-colours", size=8)
    assert len(data) == 8 and data[0]["image"].shape == (3, 8, 8) and data[0]["caption"].endswith("square")


def test_the_builtin_datasets_are_registered_like_any_other(monkeypatch):
    monkeypatch.setenv("STUDIO_LOAD_PLUGINS", "")
    assert open_dataset("shapes", size=16, seed=0)[0]["image"].shape == (3, 16, 16)
    with pytest.raises(UnknownDataset, match="known datasets: emoji, folder, shapes"):
        open_dataset("testgen-colours")


def test_a_plugins_dataset_feeds_a_plugins_trainer(monkeypatch):
    pytest.importorskip("studio_clip_gen")
    from studio_clip_gen.train import batches

    monkeypatch.setenv("STUDIO_LOAD_PLUGINS", "testgen")
    images, captions = next(batches(open_dataset("testgen-colours", size=16), batch_size=4, resolution=16))
    assert images.shape == (4, 3, 16, 16) and len(captions) == 4
