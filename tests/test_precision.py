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
