"""Shared setup: one torch thread (the suite must stay light on a shared CPU), an isolated studio
home per test, tiny model configs, and the reference key manifests in ``data/``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:
    import studio_clip_gen  # noqa: F401 - installed (pip install -e plugins/studio-clip-gen)
except ImportError:  # running from a checkout without installing the plugin
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

torch.set_num_threads(1)

DATA = Path(__file__).parent / "data"


def read_manifest(name: str) -> list[tuple[str, list[int], str]]:
    """``name<TAB>shape<TAB>dtype`` lines -> ``[(name, shape, dtype)]`` in file order."""
    rows = []
    for line in (DATA / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            rows.append((key, [int(s) for s in shape.strip("[]").split(",") if s.strip()], dtype))
    return rows


@pytest.fixture
def manifest():
    """The manifest reader (a fixture: with --import-mode=importlib tests cannot import conftest)."""
    return read_manifest


@pytest.fixture(autouse=True)
def studio_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    for name in ("STUDIO_DATABASE_URL", "STUDIO_BROKER_URL", "STUDIO_LOAD_PLUGINS", "STUDIO_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def tiny_vq_config():
    from studio_clip_gen.vqgan import VQConfig

    return VQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16,
                    z_channels=8, embed_dim=8, n_embed=16)


@pytest.fixture(scope="session")
def tiny_clip():
    """A random open_clip CLIP small enough for unit tests (16px images, 16-d embeddings)."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg={"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    return model.eval().requires_grad_(False)


COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40)}


@pytest.fixture(scope="session")
def squares():
    """A map-style dataset: coloured squares on grey at 16px, with captions (Studio's item format)."""
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(48):
        name = list(COLOURS)[i % 4]
        image = torch.full((3, 16, 16), 0.2)
        x, y = torch.randint(0, 8, (2,), generator=g).tolist()
        colour = torch.tensor(COLOURS[name]) / 127.5 - 1
        image[:, y : y + 8, x : x + 8] = colour[:, None, None]
        items.append({"image": image, "caption": f"a {name} square", "attrs": None})
    return items


@pytest.fixture(scope="session")
def parts(tmp_path_factory, tiny_vq_config_session):
    """Trained-looking part files (random weights): vqgan, transformer and a studio-tiny-64 CLIP."""
    from studio.ml import clip_configs
    from studio_clip_gen.checkpoints import write_safetensors
    from studio_clip_gen.gpt import GPT, GPTConfig
    from studio_clip_gen.vqgan import VQModel

    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    vq = tiny_vq_config_session
    write_safetensors(root / "vqgan.safetensors", VQModel(vq).state_dict(), {"vqgan": vq.to_dict()})
    gpt = GPTConfig(n_codes=vq.n_embed, grid=vq.grid, width=32, n_layers=2, n_heads=2, clip_dim=128)
    write_safetensors(root / "transformer.safetensors", GPT(gpt).state_dict(), {"gpt": gpt.to_dict()})
    clip = clip_configs.create_small_clip("studio-tiny-64")
    write_safetensors(root / "clip.safetensors", clip.state_dict(), {})
    return root


@pytest.fixture(scope="session")
def tiny_vq_config_session():
    from studio_clip_gen.vqgan import VQConfig

    return VQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16,
                    z_channels=8, embed_dim=8, n_embed=16)


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory, parts):
    from studio_clip_gen.model_dir import assemble

    dest = tmp_path_factory.mktemp("models") / "tiny"
    assemble(dest, vqgan=parts / "vqgan.safetensors", transformer=parts / "transformer.safetensors",
             clip=parts / "clip.safetensors", clip_arch="studio-tiny-64")
    return dest
