"""The generator's GEMM forms of transposed convolutions equal torch's ConvTranspose2d (values and gradients)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

from ebmtool.nets.generators import GENERATORS, GemmConvTranspose2d, Generator, general_arch


@pytest.mark.parametrize("cin,cout,k,s,p,hw,bias,path", [
    (16, 128, 4, 1, 0, 1, True, "linear"),     # first layer of mnist32/svhn32: 1x1 -> 4x4
    (8, 32, 2, 1, 0, 1, False, "linear"),      # digits8, no bias
    (32, 1, 4, 2, 1, 16, True, "fold"),        # image layer: 16x16 -> 32x32, one channel
    (64, 3, 3, 1, 1, 32, True, "fold"),        # cifar32's 3x3 stride-1 image layer
    (64, 32, 4, 2, 1, 8, True, "native"),      # a middle layer keeps the native kernel
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gemm_transposed_conv_equals_torch(cin, cout, k, s, p, hw, bias, path, channels_last):
    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(cin, cout, k, s, p, bias=bias).double()
    gem = GemmConvTranspose2d(cin, cout, k, s, p, bias=bias).double()
    gem.load_state_dict(ref.state_dict())
    assert list(gem.state_dict()) == list(ref.state_dict())
    if channels_last:
        gem.to(memory_format=torch.channels_last)
    x = torch.randn(5, cin, hw, hw, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref = ref(x1)
    calls = []
    real = torch.nn.modules.conv.F.conv_transpose2d
    with mock.patch.object(torch.nn.modules.conv.F, "conv_transpose2d", lambda *a, **k: calls.append(1) or real(*a, **k)):
        y = gem(x2)
    assert bool(calls) == (path == "native")  # the GEMM paths never call the native kernel
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y_ref)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x1, ref.weight), g)
    gx, gw = torch.autograd.grad(y, (x2, gem.weight), g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", list(GENERATORS))
def test_generators_match_plain_layers(arch):
    """Every architecture: the same images as with torch's own layers (fp32 rounding only)."""
    torch.manual_seed(0)
    spec = GENERATORS[arch] if not GENERATORS[arch].general else general_arch(48)
    g = Generator(arch, 12, 8, 3, size=spec.size if spec.general else None)
    plain = Generator(arch, 12, 8, 3, size=spec.size if spec.general else None)
    plain.load_state_dict(g.state_dict())
    for m in plain.modules():
        if isinstance(m, GemmConvTranspose2d):
            m.__class__ = nn.ConvTranspose2d
    z = torch.randn(6, 12)
    with torch.no_grad():
        out, ref = g(z), plain(z)
    assert out.shape == (6, 3, spec.size, spec.size) and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
