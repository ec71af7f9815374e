"""PSNR and SSIM on videos."""

import math

import pytest
import torch

from timeripple.video_metrics import psnr, ssim


def test_psnr_known_values_and_range_mapping():
    a = torch.zeros(9, 3, 16, 16)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    # the same pair expressed in [-1, 1] gives the same figure
    assert psnr(a * 2 - 1, (a + 0.1) * 2 - 1, value_range=(-1, 1)) == pytest.approx(20.0)


def test_ssim_identity_and_ordering():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 3, 32, 32, generator=g)
    small = (a + 0.02 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    large = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert ssim(a, a) == pytest.approx(1.0)
    assert 1.0 > ssim(a, small) > ssim(a, large) > 0.0


def test_ssim_matches_a_float64_loop_reference():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 1, 12, 12, generator=g), torch.rand(2, 1, 12, 12, generator=g)
    x = torch.arange(11, dtype=torch.float64) - 5
    w1 = torch.exp(-(x**2) / (2 * 1.5**2))
    w = torch.outer(w1, w1) / w1.sum() ** 2
    vals = []
    for f in range(2):
        for i in range(2):
            for j in range(2):
                pa, pb = a[f, 0, i : i + 11, j : j + 11].double(), b[f, 0, i : i + 11, j : j + 11].double()
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * pa * pa).sum() - ma**2, (w * pb * pb).sum() - mb**2
                cov = (w * pa * pb).sum() - ma * mb
                c1, c2 = 1e-4, 9e-4
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    assert ssim(a, b) == pytest.approx(float(torch.stack(vals).mean()), abs=1e-9)


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.zeros(9, 3, 8, 8), torch.zeros(9, 3, 8, 4))
    with pytest.raises(ValueError, match="video"):
        ssim(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
