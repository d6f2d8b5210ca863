"""CUDA paths (marker ``cuda``: skipped where ``torch.cuda.is_available()`` is False; ``pytest -m cuda`` runs only
these, as ``benchmarks/gpu_check.py`` does). Small and fast: the GPU minutes of this project are few."""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.cuda


def test_cuda_rng_state_round_trips_on_the_device():
    from ebmtool.checkpoint import cuda_rng_tensors, restore_cuda_rng

    torch.cuda.manual_seed_all(5)
    saved = cuda_rng_tensors()
    assert len(saved) == torch.cuda.device_count()
    a = torch.randn(1000, device="cuda")
    torch.randn(77, device="cuda")  # move the state on
    assert restore_cuda_rng(saved) == list(range(torch.cuda.device_count()))
    assert torch.equal(torch.randn(1000, device="cuda"), a)


def test_generator_transposed_convolutions_match_the_cpu():
    from ebmtool.nets.generators import build_generator

    torch.manual_seed(0)
    g = build_generator("svhn32", 100, 64, 3)
    z = torch.randn(8, 100, device="cpu")
    ref = g(z)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        out = g.to("cuda")(z.to("cuda")).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = old
    assert (out - ref).abs().max() < 1e-4


def test_langevin_keeps_the_latents_on_the_device(mle_model):
    from ebmtool.models import load_model

    model, _ = load_model(str(mle_model), device=torch.device("cuda"))
    z = model.prior.sample(16, steps=3, step_size=0.1, device=torch.device("cuda")).checked()
    assert z.device.type == "cuda" and bool(torch.isfinite(z).all())


def test_sample_and_precision_auto_on_cuda(mle_model, tmp_path):
    from ebmtool.runtime import resolve

    want = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert resolve("auto", torch.device("cuda")).name == want
    run_cli(["sample", "--model", mle_model, "-n", "16", "--device", "cuda", "--precision", "auto",
             "-o", tmp_path / "s.safetensors"]).ok()
