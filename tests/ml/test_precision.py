"""One set of device/precision rules for every trainer, checked before a run starts."""

import pytest
import torch

from studio.ml.precision import autocast, check_training, cpu_bf16_problem
from studio.plumbing import cuda_device_problem


def test_cpu_runs_in_every_precision_a_cpu_can_use():
    assert check_training("cpu", "fp32") == "cpu"
    assert check_training("cpu", "bf16") == "cpu"
    with autocast("cpu", "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("device, precision, choices, message", [
    ("tpu", "fp32", ("fp32", "bf16"), "unknown device 'tpu'"),
    ("meta", "fp32", ("fp32", "bf16"), "training runs on cpu or cuda, not 'meta'"),
    ("cpu", "fp16", ("fp32", "bf16"), "unknown precision 'fp16'; choose one of fp32, bf16"),
    ("cpu", "fp16", ("fp32", "fp16", "bf16"), "fp16 mixed precision needs a CUDA device; use bf16 on the CPU"),
    ("cpu", "fp8", ("fp32", "bf16"), "unknown precision 'fp8'"),
])
def test_impossible_runs_are_refused_in_one_line(device, precision, choices, message):
    with pytest.raises(ValueError, match=message) as info:
        check_training(device, precision, choices)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_a_cuda_device_this_machine_lacks_names_the_reason():
    assert "no usable CUDA device" in cuda_device_problem("cuda")
    with pytest.raises(ValueError, match=r"^--device cuda:1: this machine has no usable CUDA device .*; use cpu$"):
        check_training("cuda:1", "fp32")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_index_past_the_last_device_is_refused():
    count = torch.cuda.device_count()
    assert cuda_device_problem("cuda:0") is None
    assert f"has {count} CUDA device(s)" in cuda_device_problem(f"cuda:{count}")


@pytest.mark.parametrize("flags, slow", [
    ("fpu sse2 avx avx2 fma", True),              # AVX2 only: bf16 is emulated
    ("avx2 avx512f avx512bw avx512_bf16", False),  # AVX-512 BF16 (e.g. AMD Zen 4)
    ("avx2 avx512f amx_tile amx_bf16", False),     # AMX (Intel Xeon 4th generation)
])
def test_bf16_on_a_cpu_without_bfloat16_arithmetic_is_named_slow(tmp_path, flags, slow):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    problem = cpu_bf16_problem(cpuinfo)
    assert (problem is not None) == slow
    if slow:
        assert "--precision fp32" in problem and "\n" not in problem


def test_an_unknown_cpu_is_not_called_slow(tmp_path):
    assert cpu_bf16_problem(tmp_path / "absent") is None
    (tmp_path / "noflags").write_text("processor\t: 0\nmodel name\t: Apple M2\n")
    assert cpu_bf16_problem(tmp_path / "noflags") is None


def test_bf16_training_on_an_emulating_cpu_warns_once_and_still_runs(monkeypatch, caplog):
    import studio.ml.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16_problem", lambda: "this CPU has no bfloat16 arithmetic")
    monkeypatch.setattr(precision, "_warned", set())
    with caplog.at_level("WARNING", logger="studio.ml.precision"):
        assert check_training("cpu", "bf16") == "cpu"
        assert check_training("cpu", "fp32") == "cpu"
        assert check_training("cpu", "bf16") == "cpu"  # the command checks, then its trainer: one warning
    assert [r.getMessage() for r in caplog.records] == ["--precision bf16: this CPU has no bfloat16 arithmetic"]
