"""Writing weights is byte-reproducible: the same tensors and metadata give the same sha256 in
every process (safetensors alone orders its metadata by a per-process hash)."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

CODE = """
import hashlib, sys, torch
from studio.plumbing import safetensors_bytes
tensors = {"b.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "a.bias": torch.ones(5, dtype=torch.float16)}
metadata = {f"key{k}": str(k) for k in range(20)}
print(hashlib.sha256(safetensors_bytes(tensors, metadata)).hexdigest())
"""


def test_same_tensors_same_bytes_in_every_process():
    digests = {subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True,
                              timeout=120).stdout.strip() for _ in range(3)}
    assert len(digests) == 1


def test_the_file_reads_back_with_safetensors(tmp_path):
    from safetensors import safe_open

    from studio.plumbing import save_safetensors

    tensors = {"w": torch.randn(3, 3), "z": torch.zeros(2, dtype=torch.int64)}
    metadata = {"zeta": "1", "alpha": json.dumps({"b": 1, "a": 2})}
    path = save_safetensors(tmp_path / "w.safetensors", tensors, metadata)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == metadata
        assert torch.equal(f.get_tensor("w"), tensors["w"]) and torch.equal(f.get_tensor("z"), tensors["z"])
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    assert size % 8 == 0
    header = data[8 : 8 + size].decode().rstrip()
    assert list(json.loads(header)["__metadata__"]) == ["alpha", "zeta"]
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
