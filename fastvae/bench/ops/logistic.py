"""The discretized logistic mixture's benchmarked op."""
import math

import torch

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
