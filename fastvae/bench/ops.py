"""The benchmarked ops: for each, its inputs at a size, its providers (implementations to compare) and the
models of work it must do (bytes moved for the memory-bound ops, useful FLOPs for the distances).

A provider is built by a function that returns the callable, or raises `Unavailable` with the reason (the
package is not installed, the fastvae op is not merged yet, ...): that provider still gets a row, with the reason
as its status. Every callable takes the op's inputs and returns a tensor or a tuple of tensors; the suite
differentiates them with respect to the inputs that require grad.

Sizes (defaults differ on CPU, under --quick and on CUDA, where they must fill the GPU): for the elementwise
(Gaussian) ops the size is the batch B of (B, 1024) latents (B x 32 with 32 x 32 scale_tril for reparameterize_tril);
for the distances it is the number of samples N of (N, 64) codes; for the VAE training step it is the batch of 784-dim
inputs.
"""
import importlib
import math

import torch

import fastvae
from fastvae import reference

LATENT = 1024          # feature width of the elementwise ops
TRIL_D = 32            # latent dim of reparameterize_tril
CODE_D = 64            # code dim of the distances
MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)   # pythae's WAE imq scales of C = 2 d h^2
MMD_BANDWIDTHS = tuple(math.sqrt(s) for s in MMD_SCALES)  # the same kernel sum in fastvae's bandwidth units
SW_PROJECTIONS = 256


class Unavailable(Exception):
    """A provider that cannot run here; the message says why."""


def _need_fastvae(name, module=fastvae):
    if not hasattr(module, name):
        where = "fastvae" if module is fastvae else module.__name__
        raise Unavailable(f"{where}.{name} does not exist in this build (not merged yet)")
    return getattr(module, name)


def _import(name):
    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or a package that fails while importing
        raise Unavailable(f"{name} not importable: {type(e).__name__}: {e}") from e


class Op:
    """One benchmarked op. `make(n, dtype, device, gen)` returns the inputs (tuple); `providers` maps a provider
    name to a builder returning a callable; `bytes_model(n, itemsize, mode)` / `flops_model(n, mode)` give the
    work of one call in that mode (None where not modelled)."""

    def __init__(self, name, kind, sizes, quick_sizes, make, providers, size_label, bytes_model=None,
                 flops_model=None, doc="", cuda_sizes=None, budget_scale=1.0, mem_model=None):
        self.name, self.kind, self.sizes, self.quick_sizes = name, kind, sizes, quick_sizes
        # provider -> (n, itemsize) -> bytes a call (forward + backward) needs at least: providers that would
        # exceed the machine's free memory are skipped with a row saying so, not run into the OOM killer
        self.mem_model = mem_model or {}
        self.budget_scale = budget_scale  # the target workloads get more reps
        self.cuda_sizes = cuda_sizes or {"elementwise": [4096, 16384, 65536], "pairwise": [4096, 16384, 65536],
                                         "e2e": [256, 1024, 4096]}.get(kind, sizes)
        self.make, self.providers, self.size_label = make, providers, size_label
        self.bytes_model, self.flops_model, self.doc = bytes_model, flops_model, doc


def _randn(shape, dtype, device, gen, grad=False, scale=1.0, shift=0.0):
    t = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(scale).add_(shift)
    return t.to(device=device, dtype=dtype).requires_grad_(grad)


def _compile(fn):
    return torch.compile(fn, dynamic=False)


def _bytes(fwd, bwd):
    """bytes model from per-mode element-pass counts: fwd/bwd are functions (n, itemsize) -> bytes."""
    def model(n, itemsize, mode):
        f, b = fwd(n, itemsize), bwd(n, itemsize)
        return {"forward": f, "backward": b, "full": f + b}[mode]
    return model


def _elems(passes):
    return lambda n, s: passes * n * LATENT * s


def _dist():
    return _import("torch.distributions")


# ---- Gaussian (elementwise) ops --------------------------------------------------------------------------------
# Bytes models: each input read once, each output written once, per the fused kernels' design (eps regenerated
# from the seed, never read or written; grad_mu of reparameterize is grad_z itself). Per-sample (B,) vectors are
# negligible and not counted.

def _make_mu_logvar(n, dtype, device, gen):
    return (_randn((n, LATENT), dtype, device, gen, grad=True),
            _randn((n, LATENT), dtype, device, gen, grad=True, scale=0.5, shift=-1.0))


def _td_normal(mu, logvar):
    return _dist().Normal(mu, torch.exp(0.5 * logvar), validate_args=False)


def _td_std_normal(like):
    D = _dist()
    return D.Normal(torch.zeros((), dtype=like.dtype, device=like.device),
                    torch.ones((), dtype=like.dtype, device=like.device), validate_args=False)


def _td_kl(mu, logvar):
    D = _dist()
    return D.kl_divergence(_td_normal(mu, logvar), _td_std_normal(mu)).sum(-1)


def _reparameterize_ops():
    ops = []

    ops.append(Op(
        "reparameterize", "elementwise", [256, 1024, 4096], [128], _make_mu_logvar,
        {
            "fastvae": lambda: _need_fastvae("reparameterize"),
            "eager": lambda: reference.reparameterize,
            "compile": lambda: _compile(reference.reparameterize),
            "torch.distributions": lambda: (_dist(), lambda mu, lv: _td_normal(mu, lv).rsample())[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(3), _elems(3)),
        doc="z = mu + exp(logvar/2) eps; fwd reads mu, logvar, writes z; bwd reads grad_z, logvar, writes "
            "grad_logvar (grad_mu is grad_z)"))

    def rkl_dist(mu, lv):
        return _td_normal(mu, lv).rsample(), _td_kl(mu, lv)

    ops.append(Op(
        "reparameterize_kl", "elementwise", [256, 1024, 4096], [128], _make_mu_logvar,
        {
            "fastvae": lambda: _need_fastvae("reparameterize_kl"),
            "eager": lambda: reference.reparameterize_kl,
            "compile": lambda: _compile(reference.reparameterize_kl),
            "torch.distributions": lambda: (_dist(), rkl_dist)[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(3), _elems(5)),
        doc="(z, kl); fwd reads mu, logvar, writes z; bwd reads grad_z, mu, logvar, writes grad_mu, grad_logvar"))

    def make_tril(n, dtype, device, gen):
        mu = _randn((n, TRIL_D), dtype, device, gen, grad=True)
        a = torch.randn((n, TRIL_D, TRIL_D), generator=gen) * (0.3 / math.sqrt(TRIL_D))
        L = torch.tril(a, -1) + torch.diag_embed(torch.rand((n, TRIL_D), generator=gen) + 0.5)
        return mu, L.to(device=device, dtype=dtype).requires_grad_(True)

    def tril_fastvae():
        f = _need_fastvae("reparameterize_tril")
        return lambda mu, L: f(mu, L, validate_args=False)

    def tril_eager(mu, L):
        return reference.reparameterize_tril(mu, L, validate_args=False)

    def tril_dist(mu, L):
        d = _dist().MultivariateNormal(mu, scale_tril=L, validate_args=False)
        z = d.rsample()
        return z, d.log_prob(z)

    d = TRIL_D
    ops.append(Op(
        "reparameterize_tril", "elementwise", [256, 1024, 4096], [128], make_tril,
        {
            "fastvae": tril_fastvae,
            "eager": lambda: tril_eager,
            "compile": lambda: _compile(tril_eager),
            "torch.distributions": lambda: (_dist(), tril_dist)[1],
        },
        lambda n: f"{n}x{d}x{d}",
        lambda n, s, mode: {"forward": n * (d * d + 2 * d) * s, "backward": n * (2 * d * d + 2 * d) * s,
                            "full": n * (3 * d * d + 4 * d) * s}[mode],
        doc="(z, log_q) from the Cholesky factor; fwd reads mu, L, writes z; bwd reads grad_z, L, writes "
            "grad_mu, grad_L"))
    return ops


def _likelihood_ops():
    ops = []

    def make_nll(n, dtype, device, gen):
        x = _randn((n, LATENT), dtype, device, gen)
        mean = _randn((n, LATENT), dtype, device, gen, grad=True)
        logvar = _randn((n, LATENT), dtype, device, gen, grad=True, scale=0.5)
        return x, mean, logvar

    def nll(ns):
        f = _need_fastvae("gaussian_nll", ns) if ns is fastvae else ns.gaussian_nll
        return lambda x, mean, lv: f(x, mean, lv, reduction="none")

    def nll_dist(x, mean, lv):
        return -_td_normal(mean, lv).log_prob(x).sum(-1)

    ops.append(Op(
        "gaussian_nll", "elementwise", [256, 1024, 4096], [128], make_nll,
        {
            "fastvae": lambda: nll(fastvae),
            "eager": lambda: nll(reference),
            "compile": lambda: _compile(nll(reference)),
            "torch.distributions": lambda: (_dist(), nll_dist)[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(3), _elems(5)),
        doc="per-element logvar, reduction='none'; fwd reads x, mean, logvar; bwd reads them and writes "
            "grad_mean, grad_logvar"))

    def make_bern(n, dtype, device, gen):
        logits = _randn((n, LATENT), dtype, device, gen, grad=True, scale=2.0)
        x = (torch.rand((n, LATENT), generator=gen) < 0.3).to(device=device, dtype=dtype)
        return logits, x

    def bern(ns):
        f = _need_fastvae("bernoulli_nll", ns) if ns is fastvae else ns.bernoulli_nll
        return lambda logits, x: f(x, logits, reduction="none")

    def bern_dist(logits, x):
        return -_dist().Bernoulli(logits=logits, validate_args=False).log_prob(x).sum(-1)

    ops.append(Op(
        "bernoulli_nll", "elementwise", [256, 1024, 4096], [128], make_bern,
        {
            "fastvae": lambda: bern(fastvae),
            "eager": lambda: bern(reference),
            "compile": lambda: _compile(bern(reference)),
            "torch.distributions": lambda: (_dist(), bern_dist)[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(2), _elems(3)),
        doc="reduction='none'; fwd reads logits, x; bwd reads them and writes grad_logits"))

    def kl(ns):
        f = _need_fastvae("kl_normal", ns) if ns is fastvae else ns.kl_normal
        return lambda mu, lv: f(mu, lv, reduction="none")

    ops.append(Op(
        "kl_normal", "elementwise", [256, 1024, 4096], [128], _make_mu_logvar,
        {
            "fastvae": lambda: kl(fastvae),
            "eager": lambda: kl(reference),
            "compile": lambda: _compile(kl(reference)),
            "torch.distributions": lambda: (_dist(), _td_kl)[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(2), _elems(4)),
        doc="standard-normal prior, reduction='none'; fwd reads mu, logvar; bwd writes grad_mu, grad_logvar"))
    return ops


# ---- the fused VAE head: the workload of the vae_head_speedup target ------------------------------------------

def _vae_head_op():
    def make(n, dtype, device, gen):
        mu, lv = _make_mu_logvar(n, dtype, device, gen)
        return mu, lv, _randn((n, LATENT), dtype, device, gen)

    def head(ns):
        rkl = _need_fastvae("reparameterize_kl", ns) if ns is fastvae else ns.reparameterize_kl
        nll = _need_fastvae("gaussian_nll", ns) if ns is fastvae else ns.gaussian_nll

        def vae_head(mu, logvar, x):
            z, kl = rkl(mu, logvar)
            return (nll(x, z, reduction="none") + kl).mean()
        return vae_head

    def head_dist(mu, lv, x):
        D = _dist()
        z = _td_normal(mu, lv).rsample()
        nll = -D.Normal(z, torch.ones((), dtype=z.dtype, device=z.device), validate_args=False).log_prob(x).sum(-1)
        return (nll + _td_kl(mu, lv)).mean()

    return Op(
        "vae_head", "elementwise", [256, 1024, 4096], [128], make,
        {
            "fastvae": lambda: head(fastvae),
            "eager": lambda: head(reference),
            "compile": lambda: _compile(head(reference)),
            "torch.distributions": lambda: (_dist(), head_dist)[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(5), _elems(8)),
        budget_scale=4.0,
        doc="the fused VAE head: z, kl = reparameterize_kl(mu, logvar); loss = (gaussian_nll(x, z) + kl).mean() "
            "(unit-variance decoder). Bytes as the two ops: fwd 3+2 passes, bwd 3+5 passes")


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


# ---- distances ---------------------------------------------------------------------------------------------------
# Inputs: codes x (N, 64) requiring grad and prior samples y (N, 64) (the same samples for every provider that
# takes y). Useful FLOPs count the matmul-equivalent work of the pairwise terms: forward 2d per pair for each of
# the x-x, y-y and x-y matrices; backward (gradient for x) 2d to recompute and 2d to accumulate per pair of the
# x-x and x-y matrices. So fwd 6 d N^2, bwd 8 d N^2.

def _pairwise_flops(n, mode):
    d = CODE_D
    f, b = 6 * d * n * n, 8 * d * n * n
    return {"forward": f, "backward": b, "full": f + b}[mode]


def _make_codes(n, dtype, device, gen):
    return (_randn((n, CODE_D), dtype, device, gen, grad=True, scale=0.8, shift=0.1),
            _randn((n, CODE_D), dtype, device, gen))


def _imq_nxn(x, y):
    """pythae-style WAE MMD (unbiased, imq kernel summed over 7 scales) on full N x N distance matrices."""
    n, d = x.shape
    c_base = 2.0 * d

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(s * c_base / (s * c_base + d2) for s in MMD_SCALES)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = 1.0 - torch.eye(n, dtype=x.dtype, device=x.device)
    return (kxx * off).sum() / (n * (n - 1)) + (kyy * off).sum() / (n * (n - 1)) - 2 * kxy.mean()


def _energy_nxn(x, y):
    """Energy distance (biased) on full N x N distance matrices, as plain PyTorch code writes it."""
    return 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()


def _geomloss(loss, backend, **kw):
    geomloss = _import("geomloss")
    if backend == "online":
        try:
            importlib.import_module("pykeops")
        except Exception as e:
            raise Unavailable(f"pykeops not importable ({type(e).__name__}: {e}); geomloss online needs it") from e
    sl = geomloss.SamplesLoss(loss, backend=backend, **kw)
    return lambda x, y: sl(x, y)


def _pairwise_mem(n, s):
    """Memory models of the N x N providers (y has N rows too): the reference builds the (N, N, d) differences
    for the x-x, y-y and x-y pairs and autograd keeps them (~6 N^2 d); the N x N forms keep about ten N x N
    matrices (the distances, a kernel term per bandwidth, their sums)."""
    d = CODE_D
    ref = lambda n, s: 6 * n * n * d * s  # noqa: E731
    nxn = lambda n, s: 10 * n * n * s  # noqa: E731
    return {"eager": ref, "compile": nxn, "nxn-cdist": nxn, "geomloss-tensorized": nxn}


def _distance_ops():
    ops = []

    def mmd(ns):
        f = _need_fastvae("mmd", ns)
        return lambda x, y: f(x, y, kernel="imq", bandwidth=MMD_BANDWIDTHS, estimator="unbiased")

    ops.append(Op(
        "mmd", "pairwise", [1024, 2048, 4096], [128], _make_codes,
        {
            "fastvae": lambda: mmd(fastvae),
            "eager": lambda: mmd(reference),
            "compile": lambda: _compile(mmd(reference)),
            "nxn-cdist": lambda: _imq_nxn,
            "geomloss-tensorized": lambda: _geomloss("gaussian", "tensorized", blur=1.0),
            "geomloss-online": lambda: _geomloss("gaussian", "online", blur=1.0),
        },
        lambda n: f"{n}x{CODE_D}",
        flops_model=_pairwise_flops, mem_model=_pairwise_mem(None, None),
        doc="imq kernel summed over 7 bandwidths (pythae's WAE scales), unbiased, y = N prior samples; geomloss "
            "rows are its single-Gaussian kernel loss (one bandwidth, biased), the library alternative"))

    def energy(ns):
        f = _need_fastvae("energy_distance", ns)
        return lambda x, y: f(x, y)

    ops.append(Op(
        "energy_distance", "pairwise", [1024, 2048, 4096], [128], _make_codes,
        {
            "fastvae": lambda: energy(fastvae),
            "eager": lambda: energy(reference),
            "compile": lambda: _compile(energy(reference)),
            "nxn-cdist": lambda: _energy_nxn,
            "geomloss-tensorized": lambda: _geomloss("energy", "tensorized"),
            "geomloss-online": lambda: _geomloss("energy", "online"),
        },
        lambda n: f"{n}x{CODE_D}",
        flops_model=_pairwise_flops, mem_model=_pairwise_mem(None, None),
        doc="energy distance between x and N prior samples y"))

    def make_sw(n, dtype, device, gen):
        x, y = _make_codes(n, dtype, device, gen)
        theta = torch.randn((CODE_D, SW_PROJECTIONS), generator=gen)
        theta = (theta / theta.norm(dim=0, keepdim=True)).to(device=device, dtype=dtype)
        return x, y, theta

    def sw(ns):
        f = _need_fastvae("sliced_wasserstein", ns)
        return lambda x, y, theta: f(x, None, projections=theta, p=2)

    def sw_matmul_sort(x, y, theta):
        """What SWAE code does: project both sides, sort both, compare (y = prior samples)."""
        px, _ = torch.sort(x @ theta, dim=0)
        py, _ = torch.sort(y @ theta, dim=0)
        return ((px - py) ** 2).mean()

    def sw_pot():
        ot = _import("ot")
        return lambda x, y, theta: ot.sliced_wasserstein_distance(x, y, n_projections=SW_PROJECTIONS, p=2,
                                                                  projections=theta)

    L = SW_PROJECTIONS
    ops.append(Op(
        "sliced_wasserstein", "pairwise", [1024, 2048, 4096], [128], make_sw,
        {
            "fastvae": lambda: sw(fastvae),
            "eager": lambda: sw(reference),
            "compile": lambda: _compile(sw(reference)),
            "eager-matmul-sort": lambda: sw_matmul_sort,
            "pot": sw_pot,
        },
        lambda n: f"{n}x{CODE_D}",
        flops_model=lambda n, mode: {"forward": 2 * n * CODE_D * L, "backward": 2 * n * CODE_D * L,
                                     "full": 4 * n * CODE_D * L}[mode],
        doc=f"SW_2^2 over {L} given directions; fastvae/eager/compile use y=None (exact normal quantiles), "
            "eager-matmul-sort and POT use N prior samples. FLOPs: the projection matmul only (the rest is "
            "sorting), so % of matmul rate is low by nature"))
    return ops


def all_ops():
    return _reparameterize_ops() + _likelihood_ops() + [_vae_head_op(), _logistic_op()] + _distance_ops()
