"""Shared fixtures for the GALIP tests (helpers live in galip_helpers.py).

Everything uses random weights; nothing is downloaded. The official ViT-B/32-size networks
are built on the meta device, or once per session where real numbers are needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # galip_helpers
try:
    import studio_galip  # noqa: F401
except ImportError:  # running from a source tree without the plugin installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from galip_helpers import TINY_ARCH, TINY_CLIP_CFG, make_tiny_clip, make_tiny_nets  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def tiny_arch(monkeypatch):
    """Make the tiny CLIP loadable by name, like ViT-B-32-quickgelu."""
    from open_clip.factory import _MODEL_CONFIGS

    monkeypatch.setitem(_MODEL_CONFIGS, TINY_ARCH, TINY_CLIP_CFG)
    return TINY_ARCH


@pytest.fixture
def tiny_clip():
    return make_tiny_clip()


@pytest.fixture
def tiny_nets(tiny_clip):
    return make_tiny_nets(tiny_clip)


@pytest.fixture(autouse=True)
def studio_home(tmp_path, monkeypatch):
    """An isolated Studio home (models folder) per test."""
    home = tmp_path / "home"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    for name in ("STUDIO_DATABASE_URL", "STUDIO_BROKER_URL", "STUDIO_LOAD_PLUGINS", "STUDIO_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    return home
