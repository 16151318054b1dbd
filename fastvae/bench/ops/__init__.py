"""The benchmarked ops: for each, its inputs at a size, its providers (implementations to compare) and the
models of work it must do (bytes moved for the memory-bound ops, useful FLOPs for the distances).

A provider is built by a function that returns the callable, or raises `Unavailable` with the reason (the
package is not installed, the fastvae op is not merged yet, ...): that provider still gets a row, with the reason
as its status. Every callable takes the op's inputs and returns a tensor or a tuple of tensors; the suite
differentiates them with respect to the inputs that require grad.

Sizes (defaults differ on CPU, under --quick and on CUDA, where they must fill the GPU): for the elementwise
(Gaussian) ops the size is the batch B of (B, 1024) latents (B x 32 with 32 x 32 scale_tril for
reparameterize_tril); for the distances it is the number of samples N of (N, 64) codes; for the VAE training step it
is the batch of 784-dim inputs.

One module per op family (gaussian.py, logistic.py, distances.py) over the shared common.py.
"""
from .common import CODE_D, LATENT, MMD_BANDWIDTHS, MMD_SCALES, SW_PROJECTIONS, TRIL_D, Op, Unavailable  # noqa: F401
from .distances import _distance_ops
from .gaussian import _likelihood_ops, _reparameterize_ops, _vae_head_op
from .logistic import _logistic_op, _logistic_single_op


def all_ops():
    return (_reparameterize_ops() + _likelihood_ops() + [_vae_head_op(), _logistic_single_op(), _logistic_op()] +
            _distance_ops())
