"""--precision: fp32 default, auto only where native, clear errors, bf16 autocast reaches the networks."""

import pytest
import torch

from ebmtool import runtime as P
from ebmtool.errors import UserError

CPU = torch.device("cpu")


def test_auto_follows_the_cpu_isa(monkeypatch):
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "fma"})
    assert P.resolve("auto", CPU).name == "fp32"
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert P.resolve("auto", CPU).name == "bf16"


@pytest.mark.parametrize("flags, label", [({"avx2", "fma"}, "AVX2"), ({"avx2", "avx512f"}, "AVX512"),
                                          ({"avx2", "avx512f", "avx512_bf16"}, "AVX512-BF16"),
                                          ({"avx512_bf16", "amx_bf16"}, "AMX-BF16")])
def test_cpu_name_tells_the_isa_that_decides_auto(monkeypatch, flags, label):
    # VMs report a bare "AMD EPYC" for an AVX2 part and for one with native bf16, whose speed and `--precision auto`
    # differ: every row and speed figure names the widest ISA beside the model
    monkeypatch.setattr(P, "cpu_flags", lambda: flags)
    name = P.cpu_name()
    assert name.endswith(f" [{label}]") and len(name) > len(label) + 3
    monkeypatch.setattr(P, "cpu_flags", lambda: set())
    assert "[" not in P.cpu_name()  # flags unknown (no /proc/cpuinfo): the model name alone


def test_errors_are_one_line():
    with pytest.raises(UserError, match="unknown precision"):
        P.resolve("fp8", CPU)
    with pytest.raises(UserError, match="CUDA devices only"):
        P.resolve("tf32", CPU)
    with pytest.raises(UserError, match="fp16"):
        P.resolve("fp16", CPU)


def test_bf16_without_native_support_warns_and_runs(monkeypatch, capsys):
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2"})
    p = P.resolve("bf16", CPU)
    assert "no native bf16" in capsys.readouterr().err
    lin = torch.nn.Linear(4, 4)
    with p.context(CPU):
        y = lin(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


def test_fp32_is_exact_and_default():
    from ebmtool.config import StageCommon

    assert StageCommon().precision == "fp32"
    p = P.resolve("fp32", CPU)
    lin = torch.nn.Linear(4, 4)
    with p.context(CPU):
        assert lin(torch.randn(2, 4)).dtype == torch.float32
