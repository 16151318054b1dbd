"""Bad input: each a clear Python exception (ValueError / TypeError) whose message names the argument; and the
registered ops, called directly, refuse malformed tensors with an error instead of reading out of bounds."""
import re

import numpy as np
import pytest
import torch

import fastvae

F = fastvae


def t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, dtype=torch.float32).to(dtype) if device == "cpu" else \
        torch.empty(shape, dtype=dtype, device=device)


def raises(exc, name, fn):
    """fn() raises exc, and the message names the argument `name` (as a word)."""
    with pytest.raises(exc) as info:
        fn()
    assert re.search(rf"\b{re.escape(name)}\b", str(info.value)), f"message does not name {name}: {info.value}"


EYE = torch.eye(3).expand(2, 3, 3)

# (exception, argument named, call)
CASES = {
    # ---- mismatched shapes
    "reparameterize logvar shape": (ValueError, "logvar", lambda: F.reparameterize(t(3, 4), t(3, 5))),
    "reparameterize_kl logvar shape": (ValueError, "logvar", lambda: F.reparameterize_kl(t(3, 4), t(4, 3))),
    "kl_normal logvar shape": (ValueError, "logvar", lambda: F.kl_normal(t(3, 4), t(3, 1))),
    "kl_normal mu_prior shape": (ValueError, "mu_prior", lambda: F.kl_normal(t(3, 4), t(3, 4), t(7))),
    "kl_normal logvar_prior shape": (ValueError, "logvar_prior", lambda: F.kl_normal(t(3, 4), t(3, 4), None, t(2, 4))),
    "gaussian_nll mean shape": (ValueError, "mean", lambda: F.gaussian_nll(t(3, 4), t(3, 5))),
    "gaussian_nll mean batch": (ValueError, "mean", lambda: F.gaussian_nll(t(3, 4), t(2, 4))),
    "gaussian_nll mean sampled shape": (ValueError, "mean", lambda: F.gaussian_nll(t(3, 4), t(2, 3, 5))),
    "gaussian_nll logvar shape": (ValueError, "logvar", lambda: F.gaussian_nll(t(3, 4), t(3, 4), t(3))),
    "gaussian_nll logvar too many dims": (ValueError, "logvar", lambda: F.gaussian_nll(t(3, 4), t(3, 4), t(2, 3, 4))),
    "bernoulli_nll logits shape": (ValueError, "logits", lambda: F.bernoulli_nll(t(3, 4), t(3, 5))),
    "reparameterize_tril scale_tril shape": (ValueError, "scale_tril",
                                             lambda: F.reparameterize_tril(t(2, 3), torch.eye(4).expand(2, 4, 4))),
    "reparameterize_tril scale_tril batch": (ValueError, "scale_tril",
                                             lambda: F.reparameterize_tril(t(2, 3), torch.eye(3).expand(5, 3, 3))),
    # ---- integer and bool tensors
    "reparameterize int mu": (TypeError, "mu", lambda: F.reparameterize(t(3, dtype=torch.int64), t(3))),
    "reparameterize bool logvar": (TypeError, "logvar", lambda: F.reparameterize(t(3), t(3, dtype=torch.bool))),
    "reparameterize_kl int logvar": (TypeError, "logvar",
                                     lambda: F.reparameterize_kl(t(2, 3), t(2, 3, dtype=torch.int32))),
    "gaussian_nll int x": (TypeError, "x", lambda: F.gaussian_nll(t(2, 3, dtype=torch.int64), t(2, 3))),
    "gaussian_nll bool mean": (TypeError, "mean", lambda: F.gaussian_nll(t(2, 3), t(2, 3, dtype=torch.bool))),
    "gaussian_nll int logvar": (TypeError, "logvar", lambda: F.gaussian_nll(t(2, 3), t(2, 3), t(3, dtype=torch.int64))),
    "bernoulli_nll bool x": (TypeError, "x", lambda: F.bernoulli_nll(t(2, 3, dtype=torch.bool), t(2, 3))),
    "bernoulli_nll uint8 x": (TypeError, "x", lambda: F.bernoulli_nll(t(2, 3, dtype=torch.uint8), t(2, 3))),
    "bernoulli_nll int logits": (TypeError, "logits", lambda: F.bernoulli_nll(t(2, 3), t(2, 3, dtype=torch.int64))),
    "kl_normal int mu": (TypeError, "mu", lambda: F.kl_normal(t(2, 3, dtype=torch.int64), t(2, 3))),
    "kl_normal int mu_prior": (TypeError, "mu_prior", lambda: F.kl_normal(t(2, 3), t(2, 3), t(3, dtype=torch.int64))),
    "kl_normal bool logvar_prior": (TypeError, "logvar_prior",
                                    lambda: F.kl_normal(t(2, 3), t(2, 3), None, t(3, dtype=torch.bool))),
    "reparameterize_tril int scale_tril": (TypeError, "scale_tril",
                                           lambda: F.reparameterize_tril(t(2, 3), EYE.to(torch.int64))),
    "reparameterize_tril complex mu": (TypeError, "mu", lambda: F.reparameterize_tril(t(2, 3, dtype=torch.complex64),
                                                                                       EYE)),
    # ---- not tensors
    "reparameterize list mu": (TypeError, "mu", lambda: F.reparameterize([1.0, 2.0], t(2))),
    "gaussian_nll float logvar": (TypeError, "logvar", lambda: F.gaussian_nll(t(2, 3), t(2, 3), 0.5)),
    # ---- different devices ('meta' stands in for a second device)
    "reparameterize logvar device": (ValueError, "logvar", lambda: F.reparameterize(t(3), t(3, device="meta"))),
    "reparameterize_kl logvar device": (ValueError, "logvar",
                                        lambda: F.reparameterize_kl(t(2, 3), t(2, 3, device="meta"))),
    "gaussian_nll x device": (ValueError, "x", lambda: F.gaussian_nll(t(2, 3, device="meta"), t(2, 3))),
    "gaussian_nll logvar device": (ValueError, "logvar",
                                   lambda: F.gaussian_nll(t(2, 3), t(2, 3), t(3, device="meta"))),
    "bernoulli_nll x device": (ValueError, "x", lambda: F.bernoulli_nll(t(2, 3, device="meta"), t(2, 3))),
    "kl_normal logvar device": (ValueError, "logvar", lambda: F.kl_normal(t(2, 3), t(2, 3, device="meta"))),
    "kl_normal mu_prior device": (ValueError, "mu_prior",
                                  lambda: F.kl_normal(t(2, 3), t(2, 3), t(3, device="meta"))),
    "kl_normal logvar_prior device": (ValueError, "logvar_prior",
                                      lambda: F.kl_normal(t(2, 3), t(2, 3), None, t(2, 3, device="meta"))),
    "reparameterize_tril scale_tril device": (ValueError, "scale_tril",
                                              lambda: F.reparameterize_tril(t(2, 3), EYE.to("meta"))),
    # ---- wrong rank
    "reparameterize_kl 0-dim mu": (ValueError, "mu", lambda: F.reparameterize_kl(t(), t())),
    "kl_normal 0-dim mu": (ValueError, "mu", lambda: F.kl_normal(t(), t())),
    "gaussian_nll 0-dim x": (ValueError, "x", lambda: F.gaussian_nll(t(), t())),
    "gaussian_nll 0-dim mean": (ValueError, "mean", lambda: F.gaussian_nll(t(3), t())),
    "bernoulli_nll 0-dim x": (ValueError, "x", lambda: F.bernoulli_nll(t(), t())),
    "gaussian_nll mean 2 extra dims": (ValueError, "mean", lambda: F.gaussian_nll(t(3, 4), t(2, 2, 3, 4))),
    "reparameterize_tril 0-dim mu": (ValueError, "mu", lambda: F.reparameterize_tril(t(), t(1, 1))),
    "reparameterize_tril 1-dim scale_tril": (ValueError, "scale_tril", lambda: F.reparameterize_tril(t(3), t(3))),
    # ---- empty batch (or empty features)
    "reparameterize empty": (ValueError, "mu", lambda: F.reparameterize(t(0, 4), t(0, 4))),
    "reparameterize_kl empty": (ValueError, "mu", lambda: F.reparameterize_kl(t(0, 4), t(0, 4))),
    "reparameterize_kl no features": (ValueError, "mu", lambda: F.reparameterize_kl(t(4, 0), t(4, 0))),
    "gaussian_nll empty": (ValueError, "x", lambda: F.gaussian_nll(t(0, 4), t(0, 4))),
    "gaussian_nll no features": (ValueError, "x", lambda: F.gaussian_nll(t(3, 0), t(3, 0))),
    "gaussian_nll zero samples": (ValueError, "mean", lambda: F.gaussian_nll(t(3, 4), t(0, 3, 4))),
    "bernoulli_nll empty": (ValueError, "x", lambda: F.bernoulli_nll(t(0, 4), t(0, 4))),
    "kl_normal empty": (ValueError, "mu", lambda: F.kl_normal(t(0, 4), t(0, 4))),
    "reparameterize_tril empty": (ValueError, "mu", lambda: F.reparameterize_tril(t(0, 3), t(0, 3, 3))),
    "reparameterize_tril d=0": (ValueError, "mu", lambda: F.reparameterize_tril(t(2, 0), t(2, 0, 0))),
    # ---- n_samples
    "n_samples 0": (ValueError, "n_samples", lambda: F.reparameterize(t(3), t(3), n_samples=0)),
    "n_samples -1": (ValueError, "n_samples", lambda: F.reparameterize(t(3), t(3), n_samples=-1)),
    "n_samples float": (TypeError, "n_samples", lambda: F.reparameterize(t(3), t(3), n_samples=2.0)),
    "n_samples str": (TypeError, "n_samples", lambda: F.reparameterize(t(3), t(3), n_samples="2")),
    "n_samples bool": (TypeError, "n_samples", lambda: F.reparameterize(t(3), t(3), n_samples=True)),
    "n_samples tensor": (TypeError, "n_samples", lambda: F.reparameterize(t(3), t(3), n_samples=torch.tensor(2))),
    "tril n_samples 0": (ValueError, "n_samples", lambda: F.reparameterize_tril(t(2, 3), EYE, n_samples=0)),
    "tril n_samples float": (TypeError, "n_samples", lambda: F.reparameterize_tril(t(2, 3), EYE, n_samples=1.5)),
    # ---- scale_tril that is not a Cholesky factor
    "scale_tril upper entry": (ValueError, "scale_tril",
                               lambda: F.reparameterize_tril(t(2, 3), torch.eye(3).expand(2, 3, 3) + torch.triu(
                                   torch.ones(3, 3), 1) * 1e-3)),
    "scale_tril zero diagonal": (ValueError, "scale_tril",
                                 lambda: F.reparameterize_tril(t(2, 3), torch.diag(torch.tensor([1.0, 0.0, 2.0]))
                                                               .expand(2, 3, 3))),
    "scale_tril nan above": (ValueError, "scale_tril",
                             lambda: F.reparameterize_tril(t(2, 3), torch.eye(3).expand(2, 3, 3) + torch.triu(
                                 torch.full((3, 3), float("nan")), 1))),
    # ---- reduction
    "reduction avg": (ValueError, "reduction", lambda: F.gaussian_nll(t(2, 3), t(2, 3), reduction="avg")),
    "reduction None": (ValueError, "reduction", lambda: F.bernoulli_nll(t(2, 3), t(2, 3), reduction=None)),
    "reduction MEAN": (ValueError, "reduction", lambda: F.kl_normal(t(2, 3), t(2, 3), reduction="MEAN")),
    # ---- generator
    "generator int": (TypeError, "generator", lambda: F.reparameterize(t(3), t(3), generator=42)),
    "generator str": (TypeError, "generator", lambda: F.reparameterize_kl(t(2, 3), t(2, 3), generator="cpu")),
    "generator state": (TypeError, "generator",
                        lambda: F.reparameterize_tril(t(2, 3), EYE, generator=torch.get_rng_state())),
    # ---- values past int64, flags that are not bools
    "n_samples 2**63": (ValueError, "n_samples", lambda: F.reparameterize(t(3), t(3), n_samples=2**63)),
    "n_samples 2**64": (ValueError, "n_samples", lambda: F.reparameterize(t(3), t(3), n_samples=2**64)),
    "tril n_samples 2**63": (ValueError, "n_samples", lambda: F.reparameterize_tril(t(2, 3), EYE, n_samples=2**63)),
    "n_samples numpy bool": (TypeError, "n_samples", lambda: F.reparameterize(t(3), t(3), n_samples=np.True_)),
    "validate_args str": (TypeError, "validate_args", lambda: F.reparameterize_tril(t(2, 3), EYE, validate_args="no")),
    "validate_args None": (TypeError, "validate_args", lambda: F.reparameterize_tril(t(2, 3), EYE, validate_args=None)),
    "validate_args int": (TypeError, "validate_args", lambda: F.reparameterize_tril(t(2, 3), EYE, validate_args=0)),
    "reduction int": (ValueError, "reduction", lambda: F.gaussian_nll(t(2, 3), t(2, 3), reduction=1)),
    "reduction list": (ValueError, "reduction", lambda: F.kl_normal(t(2, 3), t(2, 3), reduction=["mean"])),
    "reduction tensor": (ValueError, "reduction", lambda: F.bernoulli_nll(t(2, 3), t(2, 3), reduction=torch.ones(2))),
    # ---- mmd / energy_distance / MMDLoss
    "bandwidth str": (TypeError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth="12")),
    "bandwidth dict": (TypeError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth={1.0: 2.0})),
    "bandwidth set": (TypeError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth={1.0, 2.0})),
    "bandwidth bool": (TypeError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth=True)),
    "bandwidth str in list": (TypeError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth=[1.0, "2"])),
    "bandwidth None in tuple": (TypeError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth=(1.0, None))),
    "bandwidth tensor": (TypeError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth=torch.tensor([1.0, 2.0]))),
    "bandwidth nested": (TypeError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth=[[1.0]])),
    "bandwidth empty": (ValueError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth=[])),
    "bandwidth nan": (ValueError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth=float("nan"))),
    "bandwidth inf in list": (ValueError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth=[1.0, float("inf")])),
    "bandwidth negative numpy": (ValueError, "bandwidth", lambda: F.mmd(t(5, 2), bandwidth=np.float32(-1))),
    "energy_distance bandwidth str": (TypeError, "bandwidth", lambda: F.energy_distance(t(5, 2), bandwidth="1")),
    "kernel int": (ValueError, "kernel", lambda: F.mmd(t(5, 2), kernel=1)),
    "kernel list": (ValueError, "kernel", lambda: F.mmd(t(5, 2), kernel=["rbf"])),
    "kernel upper case": (ValueError, "kernel", lambda: F.mmd(t(5, 2), kernel="RBF")),
    "estimator bool": (ValueError, "estimator", lambda: F.mmd(t(5, 2), estimator=True)),
    "estimator None": (ValueError, "estimator", lambda: F.mmd(t(5, 2), estimator=None)),
    "mmd generator int": (TypeError, "generator", lambda: F.mmd(t(5, 2), generator=0)),
    "MMDLoss bandwidth str": (TypeError, "bandwidth", lambda: F.MMDLoss(bandwidth="12")),
    "MMDLoss kernel": (ValueError, "kernel", lambda: F.MMDLoss(kernel="gauss")),
    "MMDLoss estimator": (ValueError, "estimator", lambda: F.MMDLoss(estimator=1)),
    "MMDLoss generator": (TypeError, "generator", lambda: F.MMDLoss(generator="cpu")),
    # ---- sliced_wasserstein / SlicedWassersteinLoss
    "p str": (TypeError, "p", lambda: F.sliced_wasserstein(t(5, 2), p="2")),
    "p bool": (TypeError, "p", lambda: F.sliced_wasserstein(t(5, 2), p=True)),
    "p tensor": (TypeError, "p", lambda: F.sliced_wasserstein(t(5, 2), p=torch.tensor(2.0))),
    "p nan": (ValueError, "p", lambda: F.sliced_wasserstein(t(5, 2), p=float("nan"))),
    "p inf": (ValueError, "p", lambda: F.sliced_wasserstein(t(5, 2), p=float("inf"))),
    "n_projections float": (TypeError, "n_projections", lambda: F.sliced_wasserstein(t(5, 2), n_projections=8.0)),
    "n_projections str": (TypeError, "n_projections", lambda: F.sliced_wasserstein(t(5, 2), n_projections="8")),
    "n_projections bool": (TypeError, "n_projections", lambda: F.sliced_wasserstein(t(5, 2), n_projections=True)),
    "n_projections -1": (ValueError, "n_projections", lambda: F.sliced_wasserstein(t(5, 2), n_projections=-1)),
    "n_projections 2**63": (ValueError, "n_projections", lambda: F.sliced_wasserstein(t(5, 2), n_projections=2**63)),
    "n_projections with projections": (TypeError, "n_projections", lambda: F.sliced_wasserstein(
        t(5, 2), n_projections=None, projections=t(2, 3))),
    "projections list": (TypeError, "projections", lambda: F.sliced_wasserstein(t(5, 2), projections=[[1.0], [0.0]])),
    "projections int": (TypeError, "projections", lambda: F.sliced_wasserstein(
        t(5, 2), projections=torch.ones(2, 3, dtype=torch.int64))),
    "projections 1-dim": (ValueError, "projections", lambda: F.sliced_wasserstein(t(5, 2), projections=t(2))),
    "projections device": (ValueError, "projections", lambda: F.sliced_wasserstein(
        t(5, 2), projections=t(2, 3, device="meta"))),
    "sliced_wasserstein generator": (TypeError, "generator", lambda: F.sliced_wasserstein(t(5, 2), generator=1)),
    "SlicedWassersteinLoss n_projections": (TypeError, "n_projections",
                                            lambda: F.SlicedWassersteinLoss(n_projections=1.5)),
    "SlicedWassersteinLoss p": (TypeError, "p", lambda: F.SlicedWassersteinLoss(p="1")),
    "SlicedWassersteinLoss projections": (TypeError, "projections",
                                          lambda: F.SlicedWassersteinLoss(projections=[[1.0]])),
    "SlicedWassersteinLoss generator": (TypeError, "generator", lambda: F.SlicedWassersteinLoss(generator=3)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_names_the_argument(name):
    exc, arg, fn = CASES[name]
    raises(exc, arg, fn)


def test_module_attributes_set_later_are_checked_at_the_call():
    m = F.MMDLoss()
    m.bandwidth = "12"
    raises(TypeError, "bandwidth", lambda: m(t(5, 2)))


def test_numpy_scalars_are_accepted_as_their_python_values():
    x, g = t(6, 2), torch.Generator
    assert torch.equal(F.reparameterize(x, x, n_samples=np.int64(2), generator=g().manual_seed(0)),
                       F.reparameterize(x, x, n_samples=2, generator=g().manual_seed(0)))
    L = torch.eye(2).expand(6, 2, 2)
    assert torch.equal(F.reparameterize_tril(x, L, validate_args=np.bool_(False), generator=g().manual_seed(0))[0],
                       F.reparameterize_tril(x, L, generator=g().manual_seed(0))[0])
    assert torch.equal(F.gaussian_nll(x, x.flip(0), reduction=np.str_("sum")), F.gaussian_nll(x, x.flip(0),
                                                                                            reduction="sum"))
    assert torch.equal(F.mmd(x, kernel="rbf", bandwidth=np.float32(1.5)), F.mmd(x, kernel="rbf", bandwidth=1.5))
    assert torch.equal(F.mmd(x, x.flip(0), bandwidth=(np.float64(1.0), np.int64(2))), F.mmd(x, x.flip(0),
                                                                                              bandwidth=[1.0, 2.0]))
    assert torch.equal(F.sliced_wasserstein(x, p=np.float64(3), n_projections=np.int32(4),
                                            generator=g().manual_seed(0)),
                       F.sliced_wasserstein(x, p=3, n_projections=4, generator=g().manual_seed(0)))


@pytest.mark.cuda
def test_generator_on_another_device_is_refused():
    x = t(4, 3)
    cuda_gen = torch.Generator(device="cuda").manual_seed(0)
    raises(ValueError, "generator", lambda: F.reparameterize(x, x, generator=cuda_gen))
    raises(ValueError, "generator", lambda: F.mmd(x, generator=cuda_gen))
    raises(ValueError, "generator", lambda: F.sliced_wasserstein(x, generator=cuda_gen))
    xc = x.cuda()  # a CPU generator with CUDA tensors is documented: the CPU's eps on the GPU
    assert torch.equal(F.reparameterize(xc, xc, generator=torch.Generator().manual_seed(0)).cpu(),
                       F.reparameterize(x, x, generator=torch.Generator().manual_seed(0)))


def test_scale_tril_checks_can_be_skipped():
    L = torch.eye(3).expand(2, 3, 3) + torch.triu(torch.ones(3, 3), 1)
    z, q = F.reparameterize_tril(t(2, 3), L, validate_args=False, generator=torch.Generator().manual_seed(0))
    z2, q2 = F.reparameterize_tril(z.new_zeros(2, 3) + 0, torch.tril(L), generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 3) and torch.equal(q, q2)  # the kernel reads only the lower triangle


# ---- the ops called directly: errors, never out-of-bounds reads ---------------------------------------------

S = torch.tensor([5])
ops = torch.ops.fastvae
DIRECT = {
    "reparameterize_backward grad_z": lambda: ops.reparameterize_backward(t(2), t(1000), S, None),
    "reparameterize_backward grad_z sampled": lambda: ops.reparameterize_backward(t(3, 10), t(10), S, 4),
    "reparameterize_kl_backward grad_z": lambda: ops.reparameterize_kl_backward(t(2, 3), t(10), t(10, 100),
                                                                                t(10, 100), S),
    "reparameterize_kl_backward grad_kl": lambda: ops.reparameterize_kl_backward(t(10, 100), t(1), t(10, 100),
                                                                                 t(10, 100), S),
    "reparameterize_tril_backward grad_z": lambda: ops.reparameterize_tril_backward(t(1, 1), t(100), t(100, 30, 30),
                                                                                    S, None),
    "reparameterize_tril_backward grad_log_q": lambda: ops.reparameterize_tril_backward(t(2, 100, 30), t(100),
                                                                                        t(100, 30, 30), S, 2),
    "gaussian_nll_backward grad": lambda: ops.gaussian_nll_backward(t(1), t(1000, 3), t(1000, 3), None, True, False),
    "bernoulli_nll_backward grad": lambda: ops.bernoulli_nll_backward(t(1), t(1000, 3), t(1000, 3)),
    "kl_normal_backward grad": lambda: ops.kl_normal_backward(t(1), t(1000, 3), t(1000, 3), None, None,
                                                              [True, True, False, False]),
    "kl_normal_backward logvar": lambda: ops.kl_normal_backward(t(1000), t(1000, 3), t(3), None, None,
                                                                [True, True, False, False]),
    "reparameterize n_samples": lambda: ops.reparameterize(t(3), t(3), S, 0),
    "reparameterize seed dtype": lambda: ops.reparameterize(t(3), t(3), torch.tensor([1.0]), None),
    "reparameterize seed size": lambda: ops.reparameterize(t(3), t(3), torch.tensor([1, 2]), None),
    "reparameterize_tril shapes": lambda: ops.reparameterize_tril(t(3, 4), t(3, 4, 5), S, None),
    "gaussian_nll dtype": lambda: ops.gaussian_nll(t(3, 4, dtype=torch.float64), t(3, 4), None),
    "gaussian_nll logvar layout": lambda: ops.gaussian_nll(t(3, 4), t(3, 4), t(5)),
    "kl_normal half on CPU": lambda: ops.kl_normal(t(3, 4, dtype=torch.half), t(3, 4, dtype=torch.half), None, None),
}


@pytest.mark.parametrize("name", list(DIRECT))
def test_direct_op_calls_are_checked(name):
    with pytest.raises((ValueError, TypeError), match="fastvae"):
        DIRECT[name]()
