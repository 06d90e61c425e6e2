"""The small CLIP that ships in the wheel: present, small, and it reads what the prompts name.

These numbers come from the held-out ``shapes`` split (scenes never seen in training); the
thresholds sit below the model card's measured values so that a bad re-export or a change in
preprocessing that silently breaks the bundled model fails here.
"""

import json

import pytest

from studio.ml import clip_configs, zero_shot
from studio.ml.evaluate import BUNDLED_CLIP


@pytest.fixture(scope="module")
def bundled():
    assert BUNDLED_CLIP.is_file(), f"{BUNDLED_CLIP} is missing from the package"
    return clip_configs.load_bundled_clip(BUNDLED_CLIP)


def test_bundled_clip_is_small_and_described():
    assert BUNDLED_CLIP.stat().st_size < 8_000_000
    card = json.loads(BUNDLED_CLIP.with_suffix(".json").read_text())
    assert card["zero_shot"]["colour"] >= 0.9
    assert card["steps"] > 0 and card["hardware"]


def test_bundled_clip_names_colour_and_shape_of_unseen_images(bundled):
    scores = zero_shot.evaluate_zero_shot(bundled, n=128)
    assert scores["colour"] >= 0.9  # 8 choices: chance is 0.125
    assert scores["shape"] >= 0.8  # 4 choices: chance is 0.25


def test_registering_the_configs_leaves_no_folder_behind(tmp_path):
    """A fresh process that builds a CLIP leaves nothing in the temporary folder (each used to leave one)."""
    import os
    import subprocess
    import sys

    code = ("import open_clip; from studio.ml import clip_configs as c\n"
            "assert not set(c.CONFIGS) & set(open_clip.list_models())\n"
            "assert c.create_small_clip(c.DEFAULT_CONFIG).visual is not None\n"
            "assert set(c.CONFIGS) <= set(open_clip.list_models())\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []
