"""fp16 where the numbers allow (issue 17): the Adaptive Filters run in the skips' half precision, with float32
only where it must be -- the alpha-weighted kernel sum, handed to the half-precision convolution scaled by a
power of two so that small mixing weights do not fall into float16's subnormal range. Checked on the CPU by
forcing the half-precision path (on a CPU the filters normally compute half inputs in float32, for speed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from r2r.models import filters
from r2r.models.filters import AdaptiveFilters


def _filters(alpha, beta=0.0, channels=64):
    f = AdaptiveFilters(channels).eval()
    with torch.no_grad():
        f.alpha.copy_(torch.tensor(alpha, dtype=torch.float32))
        f.beta.fill_(beta)
    return f


SMALL = [0.004, -0.003, 0.001, 0.002, -0.002, 0.005, 0.001, -0.001, 0.0]  # |alpha| x 1e-3 < 6.1e-5


def test_half_precision_kernel_sum_keeps_its_digits():
    """Only the 3x3 kernel term (alpha[8] = beta = 0): the half-precision result is within float16 rounding of
    the float32 one; the kernel sum cast to float16 directly (subnormal entries) is several times worse."""
    f = _filters(SMALL)
    x = (torch.randn(1, 64, 40, 40, generator=torch.Generator().manual_seed(0)) * 3).half()
    with torch.no_grad():
        ref = f(x.float())
        f.cpu_float32 = False
        half = f(x)
        naive = F.conv2d(x, f.combined_kernel(torch.float16), padding=1, groups=64)
    scale = ref.abs().max()
    err = ((half.float() - ref).abs().max() / scale).item()
    naive_err = ((naive.float() - ref).abs().max() / scale).item()
    assert half.dtype == torch.float16
    assert err < 1e-3, err
    assert naive_err > 3 * err, (naive_err, err)
    assert filters.KERNEL_SCALE == 2.0 ** 10  # a power of two: the scaling itself is exact


@pytest.mark.parametrize("alpha,beta", [(SMALL[:8] + [0.3], 0.9), ([1.0] * 9, 0.0)])
def test_half_precision_filters_match_float32(alpha, beta):
    f = _filters(alpha, beta)
    x = (torch.randn(1, 64, 40, 40, generator=torch.Generator().manual_seed(1)) * 3).half()
    with torch.no_grad():
        ref = f(x.float())
        on_cpu = f(x)  # the CPU's float32 path, rounded to half
        f.cpu_float32 = False
        half = f(x)
    assert on_cpu.dtype == half.dtype == torch.float16
    assert torch.equal(on_cpu, ref.half())
    assert ((half.float() - ref).abs().max() / ref.abs().max()).item() < 2e-3
