"""The discretized logistics' benchmarked ops: the mixture and the single form."""
import math

import torch
import torch.nn.functional as F

import fastvae
from fastvae import reference

from .common import Op, _compile, _need_fastvae, _randn


# ---- discretized logistic mixture ---------------------------------------------------------------------------------
# The likelihood of 8-bit images: x (B, 3, 32, 32) on the 8-bit grid of [-1, 1], logit_probs / means / log_scales
# (B, 3, 32, 32, K), K = 10 mixture components. Bytes model: forward reads x and the three parameter tensors once;
# backward reads them once more and writes the three gradients (nothing else is saved or recomputed from memory).

LOGISTIC_IMAGE = (3, 32, 32)
LOGISTIC_K = 10


def _logistic_op():
    pix = math.prod(LOGISTIC_IMAGE)
    K = LOGISTIC_K

    def make(n, dtype, device, gen):
        x = torch.randint(0, 256, (n, *LOGISTIC_IMAGE), generator=gen).to(torch.float32) * (2 / 255) - 1
        shape = (n, *LOGISTIC_IMAGE, K)
        return (x.to(device=device, dtype=dtype), _randn(shape, dtype, device, gen, grad=True),
                _randn(shape, dtype, device, gen, grad=True, scale=0.5),
                _randn(shape, dtype, device, gen, grad=True, scale=0.5, shift=-3.0))

    def mix(ns):
        if ns is fastvae:
            f = _need_fastvae("discretized_logistic_mixture_nll")
            # validate_args=False: the value check of x reads it once more (kept out of the kernel's timing)
            return lambda x, lg, m, ls: f(x, lg, m, ls, reduction="none", validate_args=False)
        return lambda x, lg, m, ls: ns.discretized_logistic_mixture_nll(x, lg, m, ls, reduction="none")

    return Op(
        "discretized_logistic_mixture_nll", "elementwise", [16, 64], [4], make,
        {
            "fastvae": lambda: mix(fastvae),
            "eager": lambda: mix(reference),
            "compile": lambda: _compile(mix(reference)),
        },
        lambda n: f"{n}x{'x'.join(map(str, LOGISTIC_IMAGE))}xK{K}",
        lambda n, s, mode: {"forward": n * pix * (1 + 3 * K) * s, "backward": n * pix * (1 + 6 * K) * s,
                            "full": n * pix * (2 + 9 * K) * s}[mode],
        budget_scale=2.0, cuda_sizes=[64, 256, 1024],
        doc="PixelCNN++'s likelihood of 8-bit RGB images, mixture dim last, reduction='none'; fwd reads x and "
            "logit_probs, means, log_scales; bwd reads them again and writes the three gradients")


# ---- one discretized logistic per pixel -----------------------------------------------------------------------------
# x, mean, log_scale (B, 3, 32, 32), reduction='none' (per-sample sums). Bytes model: forward reads x, mean and
# log_scale once; backward reads them once more and writes the two gradients (nothing saved beyond the inputs).

def logistic_plain(x, mean, log_scale, n_bits=8):
    """The single discretized logistic as a user writes it in plain PyTorch (PixelCNN++ / OpenAI form; the eager
    baseline of its target): per-sample -log P, the edge bins taking the tails, the midpoint density where the
    difference of the two sigmoids is below 1e-5."""
    levels = 2**n_bits - 1
    centered = x - mean
    inv_stdv = torch.exp(-log_scale)
    plus_in = inv_stdv * (centered + 1.0 / levels)
    cdf_plus = torch.sigmoid(plus_in)
    min_in = inv_stdv * (centered - 1.0 / levels)
    cdf_min = torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)     # the lowest bin: log sigmoid(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)      # the highest bin: log (1 - sigmoid(min_in))
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_stdv * centered
    log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in)
    edge = 1.0 - 0.25 / levels  # 0.999 at 8 bits: between the edge level and its neighbour
    log_probs = torch.where(x < -edge, log_cdf_plus,
                            torch.where(x > edge, log_one_minus_cdf_min,
                                        torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)),
                                                    log_pdf_mid - math.log(levels / 2))))
    return -log_probs.sum(dim=tuple(range(1, x.dim())))


def _logistic_single_op():
    pix = math.prod(LOGISTIC_IMAGE)

    def make(n, dtype, device, gen):
        x = torch.randint(0, 256, (n, *LOGISTIC_IMAGE), generator=gen).to(torch.float32) * (2 / 255) - 1
        shape = (n, *LOGISTIC_IMAGE)
        # the mean near x, as a trained decoder puts it: the plain form's midpoint fallback (an approximation) is
        # then rare, and the providers agree to float32 rounding (the kernels' time does not depend on the values)
        mean = x + torch.randn(shape, generator=gen) * 0.05
        return (x.to(device=device, dtype=dtype), mean.to(device=device, dtype=dtype).requires_grad_(),
                _randn(shape, dtype, device, gen, grad=True, scale=0.5, shift=-3.0))

    def single(ns):
        if ns is fastvae:
            f = _need_fastvae("discretized_logistic_nll")
            # validate_args=False: the value check of x reads it once more (kept out of the kernel's timing)
            return lambda x, m, ls: f(x, m, ls, reduction="none", validate_args=False)
        return lambda x, m, ls: ns.discretized_logistic_nll(x, m, ls, reduction="none")

    return Op(
        "discretized_logistic_nll", "elementwise", [16, 64], [4], make,
        {
            "fastvae": lambda: single(fastvae),
            "eager": lambda: logistic_plain,
            "eager (reference)": lambda: single(reference),
            "compile": lambda: _compile(logistic_plain),
        },
        lambda n: f"{n}x{'x'.join(map(str, LOGISTIC_IMAGE))}",
        lambda n, s, mode: {"forward": 3 * n * pix * s, "backward": 5 * n * pix * s, "full": 8 * n * pix * s}[mode],
        budget_scale=2.0, cuda_sizes=[64, 256, 1024],
        doc="one discretized logistic per subpixel of 8-bit RGB images, reduction='none'. eager = the plain "
            "PixelCNN++ form a user writes (inv_stdv = exp(-log_scale), the two sigmoids of x - mean +- 1/255, the "
            "edge bins and the midpoint fallback by torch.where, log of the difference); eager (reference) = "
            "fastvae.reference (overflow-safe, no cancellation); compile = torch.compile of the plain form. Bytes: "
            "fwd reads x, mean, log_scale; bwd reads them again and writes the two gradients")
