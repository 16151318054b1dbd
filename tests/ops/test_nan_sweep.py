"""A NaN in is a NaN out (issue 20, class 1): NaN, +inf and -inf swept through every floating-point input of every
registered op (torch.ops.fastvae.*, forward and backward ops alike), float32 and float64, under every CPU build.

The catalogue is the registry itself: the test fails for a registered op that has no case here, and the inputs
poisoned are the schema's Tensor arguments that hold floating-point values. Which outputs an input reaches is
measured, not listed: an output element depends on the poisoned element when moving that element (up or down)
moves the output. Then, with the element set to
  * NaN: every output element that depends on it is NaN, and no other one takes another finite value (one that
    a finite move leaves unchanged may still depend on it: NaN times a zero derivative is NaN);
  * +-inf: where the op at +-1e20 and +-1e30 overflows to the same +-inf, the true value is that infinity and the
    element must be it; where the op converged there to a finite limit, the element is that limit (up to 1e-4 of
    it) or NaN; elsewhere (no limit in reach) NaN, +-inf or any value.
The public functions (validate_args=False included) and 16-bit data are swept in test_public_functions_*; the CUDA
sources run the same cases under the CPU execution model in tests/cuda_on_cpu/test_cuda_kernels_on_cpu.py and
tests/cuda_on_cpu/test_logistic_cuda_on_cpu.py."""
import math

import pytest
import torch

import fastvae
from helpers import supported_isas

ops = torch.ops.fastvae
DTYPES = (torch.float32, torch.float64)
SPECIALS = (math.nan, math.inf, -math.inf)


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _t(*shape, dtype, seed, scale=1.0, shift=0.0):
    return (torch.randn(shape, generator=_g(seed), dtype=torch.float64) * scale + shift).to(dtype)


def _seed():
    return torch.tensor([12345], dtype=torch.int64)


def _grid(shape, dtype, seed):
    k = torch.randint(0, 256, shape, generator=_g(seed))
    x = (2 * k.double() / 255 - 1)
    x.view(-1)[::5] = -1.0  # edge bins
    x.view(-1)[2::7] = 1.0
    return x.to(dtype)


# ---- valid calls of every registered op: name -> [(variant, args)] -----------------------------------------------

def _reparam(dt):
    return [(f"k={k}", [_t(3, 4, dtype=dt, seed=1), _t(3, 4, dtype=dt, seed=2), _seed(), k]) for k in (None, 2)]


def _reparam_bwd(dt):
    return [(f"k={k}", [_t(*([k] if k else []), 3, 4, dtype=dt, seed=1), _t(3, 4, dtype=dt, seed=2), _seed(), k])
            for k in (None, 2)]


def _reparam_kl(dt):
    return [("", [_t(3, 4, dtype=dt, seed=1), _t(3, 4, dtype=dt, seed=2), _seed()])]


def _reparam_kl_bwd(dt):
    return [("", [_t(3, 4, dtype=dt, seed=3), _t(3, dtype=dt, seed=4), _t(3, 4, dtype=dt, seed=1),
                  _t(3, 4, dtype=dt, seed=2), _seed()])]


def _tril(dt):
    L = _t(3, 4, 4, dtype=dt, seed=2, scale=0.3).tril() + torch.eye(4, dtype=dt)
    return [(f"k={k}", [_t(3, 4, dtype=dt, seed=1), L, _seed(), k]) for k in (None, 2)]


def _tril_bwd(dt):
    L = _t(3, 4, 4, dtype=dt, seed=2, scale=0.3).tril() + torch.eye(4, dtype=dt)
    return [(f"k={k}", [_t(*([k] if k else []), 3, 4, dtype=dt, seed=3), _t(*([k] if k else []), 3, dtype=dt, seed=4),
                        L, _seed(), k]) for k in (None, 2)]


def _lv_variants(dt, main):
    return [("logvar=None", None), ("logvar full", _t(*main, dtype=dt, seed=3)),
            ("logvar per feature", _t(*main[-2:], dtype=dt, seed=3))]


def _gnll(dt):
    out = []
    for main in ((3, 2, 5), (2, 3, 2, 5)):
        out += [(f"{main} {n}", [_t(3, 2, 5, dtype=dt, seed=1), _t(*main, dtype=dt, seed=2), lv])
                for n, lv in _lv_variants(dt, main)]
    return out


def _gnll_bwd(dt):
    out = []
    for main in ((3, 2, 5), (2, 3, 2, 5)):
        g = _t(*main[:-2], dtype=dt, seed=4)
        out += [(f"{main} {n}", [g, _t(3, 2, 5, dtype=dt, seed=1), _t(*main, dtype=dt, seed=2), lv, True, True])
                for n, lv in _lv_variants(dt, main)]
    return out


def _bnll(dt):
    x = torch.rand(3, 5, generator=_g(1), dtype=torch.float64).to(dt)
    return [("", [_t(3, 5, dtype=dt, seed=2), x]), ("k=2", [_t(2, 3, 5, dtype=dt, seed=2), x])]


def _bnll_bwd(dt):
    x = torch.rand(3, 5, generator=_g(1), dtype=torch.float64).to(dt)
    return [("", [_t(3, dtype=dt, seed=4), _t(3, 5, dtype=dt, seed=2), x]),
            ("k=2", [_t(2, 3, dtype=dt, seed=4), _t(2, 3, 5, dtype=dt, seed=2), x])]


def _kl(dt):
    mu, lv = _t(3, 5, dtype=dt, seed=1), _t(3, 5, dtype=dt, seed=2)
    return [("std", [mu, lv, None, None]),
            ("prior full", [mu, lv, _t(3, 5, dtype=dt, seed=3), _t(3, 5, dtype=dt, seed=4)]),
            ("prior per feature", [mu, lv, _t(5, dtype=dt, seed=3), _t(5, dtype=dt, seed=4)])]


def _kl_bwd(dt):
    return [(n, [_t(3, dtype=dt, seed=5), *a, [True] * 4]) for n, a in _kl(dt)]


def _mmd_variants(dt):
    x, y = _t(1, 9, 3, dtype=dt, seed=1), _t(1, 7, 3, dtype=dt, seed=2, shift=0.3)
    out = []
    for kernel in ("rbf", "imq", "laplacian", "energy"):
        out.append((f"{kernel} y", [x, y, None, kernel, [0.5, 2.0], True]))
        out.append((f"{kernel} biased", [x, y, None, kernel, [1.0], False]))
        out.append((f"{kernel} prior", [x, None, _seed() if kernel != "rbf" else None, kernel, [1.0], True]))
    return out


def _mmd(dt):
    return _mmd_variants(dt)


def _mmd_bwd(dt):
    return [(n, [_t(1, dtype=dt, seed=7), *a, a[1] is not None]) for n, a in _mmd_variants(dt)]


def _sw_variants(dt):
    px, py = _t(2, 3, 11, dtype=dt, seed=1), _t(2, 3, 11, dtype=dt, seed=2)
    return [(f"p={p} {n}", px, q, p) for p in (1.0, 2.0, 1.5) for n, q in (("py", py), ("normal", None))]


def _sw(dt):
    return [(n, [px, py, p]) for n, px, py, p in _sw_variants(dt)]


def _sw_bwd(dt):
    out = []
    for n, px, py, p in _sw_variants(dt):
        _, perm_x, perm_y = ops.sliced_wasserstein_projected(px, py, p)
        out.append((n, [_t(2, dtype=dt, seed=7), px, py, perm_x, perm_y, p, py is not None]))
    return out


def _logistic_variants(dt):
    x = _grid((2, 13), dt, seed=1)
    out = []
    for K in (1, 3):
        for lead in ((), (2,)):
            shape = (*lead, 2, 13, K)
            lg = _t(*shape, dtype=dt, seed=2) if K > 1 else None
            m = _t(*shape, dtype=dt, seed=3, scale=0.5)
            ls = _t(*shape, dtype=dt, seed=4, shift=-3.0)
            out.append((f"K={K} lead={lead}", x, lg, m, ls, lead))
    return out


def _logistic(dt):
    return [(n, [x, lg, m, ls, 8]) for n, x, lg, m, ls, _ in _logistic_variants(dt)]


def _logistic_with_grad(dt):
    """The single logistic's forward with gradients (CPU): the K = 1 variants, without logit_probs."""
    return [(n, [x, m, ls, 8]) for n, x, lg, m, ls, _ in _logistic_variants(dt) if lg is None]


def _logistic_mixture_with_grad(dt):
    """The mixture's forward with gradients (CPU): the variants with logit_probs."""
    return [(n, [x, lg, m, ls, 8]) for n, x, lg, m, ls, _ in _logistic_variants(dt) if lg is not None]


def _logistic_bwd(dt):
    return [(n, [_t(*lead, 2, dtype=dt, seed=9), x, lg, m, ls, 8]) for n, x, lg, m, ls, lead in _logistic_variants(dt)]


def _pos(*shape, dtype, seed):
    return _t(*shape, dtype=dtype, seed=seed, scale=0.5).exp()


def _dropin_nll(dt):
    x, m = _t(3, 5, dtype=dt, seed=1), _t(3, 5, dtype=dt, seed=2)
    out = []
    for param, spread in ((0, _pos(3, 5, dtype=dt, seed=3)), (1, _pos(5, dtype=dt, seed=3)), (2, _t(3, 5, dtype=dt,
                                                                                                   seed=3))):
        out += [(f"param={param} row_len={r}", [x, m, spread, param, 1e-6 if param == 1 else 0.0, 0.9, -1.0, r])
                for r in (1, 5)]
    return out


def _dropin_nll_bwd(dt):
    return [(n, [_t(15 // a[-1], dtype=dt, seed=7), *a, [True] * 3]) for n, a in _dropin_nll(dt)]


def _dropin_kl(dt):
    return [(f"row_len={r}", [_t(3, 5, dtype=dt, seed=1), _pos(3, 5, dtype=dt, seed=2), _t(5, dtype=dt, seed=3),
                              _pos(5, dtype=dt, seed=4), 1.0, r]) for r in (1, 15)]


def _dropin_kl_bwd(dt):
    return [(n, [_t(15 // a[-1], dtype=dt, seed=7), *a, [True] * 4]) for n, a in _dropin_kl(dt)]


def _dropin_rsample(dt):
    return [(f"k={k}", [_t(3, 5, dtype=dt, seed=1), _pos(3, 5, dtype=dt, seed=2), _seed(), k]) for k in (None, 2)]


def _dropin_rsample_bwd(dt):
    return [(f"k={k}", [_t(*([k] if k else []), 3, 5, dtype=dt, seed=3), _pos(3, 5, dtype=dt, seed=2), _seed(), k,
                        [True, True]]) for k in (None, 2)]


def _dropin_bce(dt):
    y = torch.rand(3, 5, generator=_g(1), dtype=torch.float64).to(dt)
    return [(f"{n} row_len={r}", [_t(3, 5, dtype=dt, seed=2), y, w, pw, 0.5, r])
            for n, w, pw in (("plain", None, None),
                             ("weights", _pos(3, 5, dtype=dt, seed=3), _pos(5, dtype=dt, seed=4)))
            for r in (1, 5)]


def _dropin_bce_bwd(dt):
    return [(n, [_t(15 // a[-1], dtype=dt, seed=7), *a, [True, True]]) for n, a in _dropin_bce(dt)]


def _with_grad(cases, n_grads):
    """The forward with gradients (CPU): the forward's arguments and an output_mask of all True."""
    return lambda dt: [(n, [*a, [True] * n_grads]) for n, a in cases(dt)]


CASES = {
    "dropin_normal_nll_with_grad": _with_grad(_dropin_nll, 3), "dropin_normal_kl_with_grad": _with_grad(_dropin_kl, 4),
    "dropin_bce_with_logits_with_grad": _with_grad(_dropin_bce, 2),
    "dropin_normal_nll": _dropin_nll, "dropin_normal_nll_backward": _dropin_nll_bwd,
    "dropin_normal_kl": _dropin_kl, "dropin_normal_kl_backward": _dropin_kl_bwd,
    "dropin_normal_rsample": _dropin_rsample, "dropin_normal_rsample_backward": _dropin_rsample_bwd,
    "dropin_bce_with_logits": _dropin_bce, "dropin_bce_with_logits_backward": _dropin_bce_bwd,
    "reparameterize": _reparam, "reparameterize_backward": _reparam_bwd,
    "reparameterize_kl": _reparam_kl, "reparameterize_kl_backward": _reparam_kl_bwd,
    "reparameterize_tril": _tril, "reparameterize_tril_backward": _tril_bwd,
    "gaussian_nll": _gnll, "gaussian_nll_backward": _gnll_bwd,
    "bernoulli_nll": _bnll, "bernoulli_nll_backward": _bnll_bwd,
    "kl_normal": _kl, "kl_normal_backward": _kl_bwd,
    "mmd": _mmd, "mmd_backward": _mmd_bwd,
    "sliced_wasserstein_projected": _sw, "sliced_wasserstein_projected_backward": _sw_bwd,
    "discretized_logistic_nll": _logistic, "discretized_logistic_nll_backward": _logistic_bwd,
    "discretized_logistic_nll_with_grad": _logistic_with_grad,
    "discretized_logistic_mixture_nll_with_grad": _logistic_mixture_with_grad,
}
NO_FLOAT_INPUT = {"_normals", "random_directions"}  # a seed and sizes only (checked against the schema below)


def registered_ops():
    """The fastvae ops in the dispatcher's registry, by name (their only overload is `default`)."""
    return sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastvae::"))


def _tensor_args(op):
    """The indices of the schema's Tensor / Tensor? arguments."""
    return [i for i, a in enumerate(getattr(ops, op).default._schema.arguments)
            if str(a.type) in ("Tensor", "Optional[Tensor]")]


def test_every_registered_op_has_a_case():
    names = set(registered_ops())
    missing = names - set(CASES) - NO_FLOAT_INPUT
    assert not missing, f"ops without a case in the NaN sweep (add one to CASES): {sorted(missing)}"
    assert not (set(CASES) | NO_FLOAT_INPUT) - names, "cases of ops that are not registered"
    for op in NO_FLOAT_INPUT:  # a seed tensor and ints: nothing to poison
        for i in _tensor_args(op):
            assert getattr(ops, op).default._schema.arguments[i].name == "seed", op


# ---- the check ------------------------------------------------------------------------------------------------

def _float_outputs(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in outs if o.is_floating_point()]


def _call(op, args):
    return _float_outputs(getattr(ops, op)(*args))


def _with(args, i, flat_index, value):
    a = list(args)
    t = a[i].clone()
    t.view(-1)[flat_index] = value
    a[i] = t
    return a


def _dependent(op, args, i, j, base):
    """Per output, the elements that move when element j of argument i moves (up or down, a little or to +-1e30)."""
    v = float(args[i].reshape(-1)[j])
    dep = [torch.zeros_like(b, dtype=torch.bool) for b in base]
    for new in (v + 0.3 + 0.5 * abs(v), v - 0.3 - 0.5 * abs(v), 1e30, -1e30):
        for d, o, b in zip(dep, _call(op, _with(args, i, j, new)), base):
            d |= ~((o == b) | (o.isnan() & b.isnan()))
    return dep


def check_special(op, args, i, j, value):
    """[] if the op treats `value` at element j of argument i as the module docstring says; else the failures."""
    base = _call(op, args)
    dep = _dependent(op, args, i, j, base)
    got = _call(op, _with(args, i, j, value))
    fails = []
    if not math.isnan(value):  # the op far out: converged to a finite limit, or overflowed to +-inf
        far = [_call(op, _with(args, i, j, math.copysign(b, value))) for b in (1e20, 1e30)]
    for k, (g, b, d) in enumerate(zip(got, base, dep)):
        moved = g[~d].isfinite() & (g[~d] != b[~d])
        if moved.any():
            fails.append(f"output {k}: {int(moved.sum())} elements that do not depend on the input moved")
        gd = g[d]
        if math.isnan(value):
            if not gd.isnan().all():
                fails.append(f"output {k}: {int((~gd.isnan()).sum())} of {gd.numel()} dependent elements not NaN, "
                             f"e.g. {gd[~gd.isnan()][:3].tolist()}")
            continue
        l20, l30 = far[0][k][d], far[1][k][d]
        converged = l20.isfinite() & l30.isfinite() & ((l20 - l30).abs() <= 1e-6 * l30.abs() + 1e-30)
        overflow = l20.isinf() & (l20 == l30)
        tol = 1e-4 * l30.abs() + 1e-6 * (b.abs().nan_to_num(0, 0, 0).max() if b.numel() else 0)
        bad = (converged & gd.isfinite() & ~((gd - l30).abs() <= tol)) | (overflow & (gd != l30))
        if bad.any():
            fails.append(f"output {k}: {int(bad.sum())} of {gd.numel()} dependent elements wrong, e.g. got "
                         f"{gd[bad][:3].tolist()} where the op at 1e20 and 1e30 gives {l30[bad][:3].tolist()}")
    return fails


def _sweep(op, dtype):
    fails = []
    for variant, args in CASES[op](dtype):
        for i in _tensor_args(op):
            a = args[i]
            if a is None or not a.is_floating_point() or a.numel() == 0:
                continue
            name = getattr(ops, op).default._schema.arguments[i].name
            for j in sorted({0, a.numel() // 2, a.numel() - 1}):
                for value in SPECIALS:
                    for f in check_special(op, args, i, j, value):
                        fails.append(f"{op}({variant}) {name}[{j}] = {value}: {f}")
    return fails


@pytest.mark.parametrize("isa", supported_isas())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(CASES))
def test_special_values_through_every_input(op, dtype, isa):
    fastvae._C.force_cpu_isa(isa)
    try:
        fails = _sweep(op, dtype)
    finally:
        fastvae._C.force_cpu_isa("auto")
    assert not fails, f"{len(fails)} failures:\n" + "\n".join(fails[:30])


# ---- the public functions: every dtype (16-bit computed in float32), validate_args=False ---------------------------

def _public_cases(dt):
    """name -> (function of the float inputs, the inputs (batch 3 first), per-sample loss of sample 0 only)."""
    g = _g(5)
    f = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dt)  # noqa: E731
    x8 = _grid((3, 2, 5), dt, seed=6)
    L = fastvae
    return {
        "gaussian_nll": (lambda x, m, lv: L.gaussian_nll(x, m, lv, reduction="none"), [f(3, 5), f(3, 5), f(3, 5)]),
        "bernoulli_nll": (lambda l, x: L.bernoulli_nll(x, l, reduction="none"),
                          [f(3, 5), torch.rand(3, 5, generator=g).to(dt)]),
        "kl_normal": (lambda m, lv, mp, lp: L.kl_normal(m, lv, mp, lp, reduction="none"),
                      [f(3, 5), f(3, 5), f(3, 5), f(3, 5)]),
        "reparameterize_kl": (lambda m, lv: L.reparameterize_kl(m, lv, generator=_g(1))[1], [f(3, 5), f(3, 5)]),
        "discretized_logistic_nll": (
            lambda x, m, ls: L.discretized_logistic_nll(x, m, ls, reduction="none", validate_args=False),
            [x8, f(3, 2, 5) * 0.5, f(3, 2, 5) - 3]),
        "discretized_logistic_mixture_nll": (
            lambda x, lg, m, ls: L.discretized_logistic_mixture_nll(x, lg, m, ls, reduction="none",
                                                                    validate_args=False),
            [x8, f(3, 2, 5, 4), f(3, 2, 5, 4) * 0.5, f(3, 2, 5, 4) - 3]),
        "mmd": (lambda x, y: L.mmd(x, y, kernel="laplacian"), [f(3, 6, 2), f(3, 5, 2)]),
        "energy_distance": (lambda x, y: L.energy_distance(x, y), [f(3, 6, 2), f(3, 5, 2)]),
        "sliced_wasserstein": (lambda x, y: L.sliced_wasserstein(x, y, n_projections=4, p=1, generator=_g(2)),
                               [f(3, 6, 2), f(3, 6, 2)]),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(_public_cases(torch.float32)))
def test_public_functions_nan_in_one_sample(name, dtype):
    """NaN in sample 0 of any input: sample 0's loss and its gradients NaN, the other samples' finite (the
    discretized logistic in 16-bit and float32 gave an ordinary negative-looking loss, its mixture +inf)."""
    fn, inputs = _public_cases(dtype)[name]
    for i in range(len(inputs)):
        for isa in supported_isas():
            # every input differentiable but the data x of the logistic (gradient 0) and of the Bernoulli (-logits,
            # whatever x is)
            data = {"bernoulli_nll": 1}.get(name, 0 if "logistic" in name else -1)
            args = [t.clone().requires_grad_(k != data) for k, t in enumerate(inputs)]
            args[i].data.view(-1)[1] = float("nan")  # in sample 0
            fastvae._C.force_cpu_isa(isa)
            try:
                out = fn(*args)
                grad = torch.autograd.grad(out[0], args[i], allow_unused=True)[0] if args[i].requires_grad else None
            finally:
                fastvae._C.force_cpu_isa("auto")
            what = f"{name} input {i} ({isa})"
            assert out[0].isnan(), f"{what}: the loss of the NaN sample is {out[0].item()}"
            assert out[1:].isfinite().all(), f"{what}: other samples {out[1:].tolist()}"
            if grad is not None:  # the NaN element's own gradient
                assert grad.reshape(-1)[1].isnan(), f"{what}: its gradient {grad.reshape(-1)[1].item()}"
