"""Every registered fastvae op (torch.ops.fastvae.*, public or internal, forward or backward) called with random
shapes (0-sized and mismatched included), dtypes, values (NaN, inf, huge), optional arguments None or present,
devices, and index tensors out of range, negative, repeated or of the wrong dtype: each call must return or raise
a Python exception, never kill the process.

The calls run in a child process (`python tests/ops/test_op_fuzz.py --child SEED`), which announces each case before
making it; a signal (segfault, abort) fails the test naming that case, regenerated from its seed. Each case is a
valid call of the op from a random-size template, then (most of the time) one or two mutations of it; the
template and mutations come from random.Random(f"{SEED}:{op}:{i}"), so a case is reproducible on its own:
`python tests/ops/test_op_fuzz.py --case mmd_backward.default 17` prints it and makes the call."""
import faulthandler
import math
import os
import random
import subprocess
import sys

import pytest
import torch

SEED = 9
CASES_PER_OP = 120
CHILD_TIMEOUT_S = 300  # the whole run takes ~15 s on 2 cores; a hang is a failure too

# ---------------------------------------------------------------------------------------------------------------
# the case generator (shared by the test and the child process)

FLOAT_DTYPES = (torch.float32, torch.float64)
BAD_DTYPES = (torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.bool, torch.complex64)
SPECIAL_VALUES = (math.nan, math.inf, -math.inf, 1e30, -1e30, 3e38, 1e300, 1e-40, 0.0, -0.0)


class Gen:
    """Random tensors and sizes for one case."""

    def __init__(self, op, i, device):
        self.r = random.Random(f"{SEED}:{op}:{i}")
        self.g = torch.Generator().manual_seed(self.r.getrandbits(62))
        self.device = device
        self.dtype = self.r.choice(FLOAT_DTYPES)

    def size(self, lo=0, hi=5):
        # 0 and 1 often: the edges
        return self.r.choice([0, 1, 1, 2, self.r.randint(lo, hi)]) if lo == 0 else self.r.randint(lo, hi)

    def t(self, *shape, dtype=None):
        v = torch.randn(shape, generator=self.g, dtype=torch.float64)
        return v.to(dtype or self.dtype).to(self.device)

    def seed(self):
        return torch.tensor([self.r.getrandbits(62)], dtype=torch.int64, device=self.device)

    def feats(self):
        return [self.size(1, 4) for _ in range(self.r.randint(0, 2))]

    def k(self):
        return self.r.choice([None, None, 1, 2, 3])


def _lik_shapes(G):
    B, F = G.size(), G.feats()
    k = G.r.choice([None, None, G.size(1, 3)])
    main = [B, *F] if k is None else [k, B, *F]
    out = [B] if k is None else [k, B]
    return [B, *F], main, out, F


def _lv_for(G, main, F):
    return G.r.choice([None, G.t(*main), G.t(*F)])


def _sw_args(G):
    B, L, N = G.size(), G.size(1, 3), G.size(1, 70)
    px = G.t(B, L, N)
    py = G.r.choice([None, G.t(B, L, N)])
    p = G.r.choice([1.0, 2.0, 1.5, 3.0])
    return px, py, p


def _perm(G, px):
    """Per-row permutations of 0 .. N-1, as the forward returns them."""
    B, L, N = px.shape
    rows = [torch.randperm(N, generator=G.g) for _ in range(B * L)]
    perm = torch.stack(rows) if rows else torch.empty(0, N, dtype=torch.int64)
    return perm.reshape(B, L, N).to(torch.int32).to(px.device)


def _mmd_args(G):
    B, N, d = G.size(), G.size(1, 70), G.size(1, 4)
    x = G.t(B, N, d)
    y = G.r.choice([None, G.t(B, G.size(1, 70), d)])
    kernel = G.r.choice(["rbf", "imq", "laplacian", "energy"])
    bw = [G.r.choice([0.5, 1.0, 2.0, 1e-20, 1e19]) for _ in range(G.r.randint(1, 3))]
    unbiased = G.r.random() < 0.5
    seed = G.seed() if y is None and kernel != "rbf" or G.r.random() < 0.3 else None
    return x, y, seed, kernel, bw, unbiased


def _logistic_args(G):
    """x on the 8-bit grid (B, *F); logit_probs (or None: K = 1), means, log_scales (*x.shape, K) or (k, ..., K)."""
    xs, main, out, F = _lik_shapes(G)
    K = 1 if G.r.random() < 0.3 else G.size(1, 5)
    x = (torch.randint(0, 256, xs, generator=G.g) * (2 / 255) - 1).to(G.dtype).to(G.device)
    lg = None if K == 1 and G.r.random() < 0.7 else G.t(*main, K)
    return out, [x, lg, G.t(*main, K), G.t(*main, K), G.r.choice([8, 8, 1, 5, 16])]


def _dropin_args(G, n):
    """n operands in the period layout (the first (B, *F), the others a scalar, per-feature or full; an optional
    one None sometimes), the rows' count and a row_len dividing the output."""
    S = [G.size(), *G.feats()]
    ts = [G.t(*S)] + [G.t(*G.r.choice([[], S[1:], S])) for _ in range(n - 1)]
    N = math.prod(S)
    row_len = G.r.choice([1, max(N, 1), max(S[-1], 1)])
    return ts, max(N, 1) // row_len if N else 0, row_len


def _dropin(G, n, extra, backward, n_grads, optional=0):
    ts, rows, row_len = _dropin_args(G, n)
    for j in range(n - optional, n):
        ts[j] = G.r.choice([None, ts[j]])
    head = [G.t(rows, dtype=torch.float64 if G.dtype == torch.float64 else torch.float32)] if backward else []
    tail = [[G.r.random() < 0.7 for _ in range(n_grads)]] if backward else []
    return [*head, *ts, *extra, row_len, *tail]


def _mask(G, n):
    return [G.r.random() < 0.7 for _ in range(n)]


def _nll_extra(G):
    return [G.r.choice([0, 1, 2]), G.r.choice([0.0, 1e-6, 0.5]), 0.9, G.r.choice([1.0, -1.0, 1e-3])]


def _rsample(G, backward):
    S, k = [G.size() for _ in range(G.r.randint(0, 3))], G.k()
    head = [G.t(*([k] if k else []), *S)] if backward else [G.t(*S)]
    return [*head, G.t(*S), G.seed(), k] + ([[G.r.random() < 0.7, G.r.random() < 0.7]] if backward else [])


# op -> valid arguments (a list) for random sizes
TEMPLATES = {
    "reparameterize": lambda G: (lambda S, k: [G.t(*S), G.t(*S), G.seed(), k])(
        [G.size() for _ in range(G.r.randint(0, 3))], G.k()),
    "reparameterize_backward": lambda G: (lambda S, k: [G.t(*([k] if k else []), *S), G.t(*S), G.seed(), k])(
        [G.size() for _ in range(G.r.randint(0, 3))], G.k()),
    "reparameterize_kl": lambda G: (lambda S: [G.t(*S), G.t(*S), G.seed()])([G.size(), *G.feats()]),
    "reparameterize_kl_backward": lambda G: (lambda S: [G.t(*S), G.t(S[0], dtype=torch.float64 if G.dtype ==
                                                                    torch.float64 else torch.float32),
                                                        G.t(*S), G.t(*S), G.seed()])([G.size(), *G.feats()]),
    "reparameterize_tril": lambda G: (lambda R, d, k: [G.t(R, d), G.t(R, d, d).tril(), G.seed(), k,
                                                       G.r.random() < 0.5])(G.size(), G.size(0, 4), G.k()),
    "reparameterize_tril_backward": lambda G: (lambda R, d, k: [
        G.t(*([k] if k else []), R, d), G.t(*([k] if k else []), R), G.t(R, d, d).tril(), G.seed(), k])(
        G.size(), G.size(0, 4), G.k()),
    "gaussian_nll": lambda G: (lambda xs, main, out, F: [G.t(*xs), G.t(*main), _lv_for(G, main, F)])(
        *_lik_shapes(G)),
    "gaussian_nll_backward": lambda G: (lambda xs, main, out, F: [
        G.t(*out), G.t(*xs), G.t(*main), _lv_for(G, main, F), G.r.random() < 0.8, G.r.random() < 0.8])(
        *_lik_shapes(G)),
    "bernoulli_nll": lambda G: (lambda xs, main, out, F: [G.t(*main), G.t(*xs)])(*_lik_shapes(G)),
    "bernoulli_nll_backward": lambda G: (lambda xs, main, out, F: [G.t(*out), G.t(*main), G.t(*xs)])(
        *_lik_shapes(G)),
    "kl_normal": lambda G: (lambda S: [G.t(*S), G.t(*S), G.r.choice([None, G.t(*S), G.t(*S[1:])]),
                                       G.r.choice([None, G.t(*S), G.t(*S[1:])])])([G.size(), *G.feats()]),
    "kl_normal_backward": lambda G: (lambda S: [
        G.t(S[0]), G.t(*S), G.t(*S), G.r.choice([None, G.t(*S), G.t(*S[1:])]),
        G.r.choice([None, G.t(*S), G.t(*S[1:])]), [G.r.random() < 0.7 for _ in range(4)]])([G.size(), *G.feats()]),
    "_normals": lambda G: [G.seed(), G.r.randint(0, 10), G.r.randint(0, 50)],
    "mmd": lambda G: list(_mmd_args(G)),
    "mmd_backward": lambda G: (lambda a: [G.t(a[0].shape[0]), *a, G.r.random() < 0.7])(_mmd_args(G)),
    "sliced_wasserstein_projected": lambda G: list(_sw_args(G)),
    "sliced_wasserstein_projected_backward": lambda G: (lambda px, py, p: [
        G.t(px.shape[0]), px, py, _perm(G, px), _perm(G, px) if py is not None else
        torch.empty(0, dtype=torch.int32, device=px.device), p, G.r.random() < 0.7])(*_sw_args(G)),
    "random_directions": lambda G: [G.seed(), G.size(1, 6), G.size(1, 6)],
    # reduction 0 / 1 / 2 (none / sum / mean), and the x-on-the-grid check in the op on or off; the backward's grad
    # of per-sample shape or 0-dim, whatever the reduction (a mismatch must be refused, not read out of bounds)
    "discretized_logistic_nll": lambda G: _logistic_args(G)[1] + [G.r.choice([0, 1, 2]), G.r.random() < 0.5],
    "discretized_logistic_nll_backward": lambda G: (lambda out, a: [G.t(*G.r.choice([out, out, []])), *a,
                                                                    G.r.choice([0, 1, 2])])(*_logistic_args(G)),
    # (one logistic per pixel: logit_probs dropped, means of K = 1 most of the time; a K > 1 one must be refused)
    "discretized_logistic_nll_with_grad": lambda G: (lambda a: [a[0], *a[2:], G.r.choice([0, 1, 2]),
                                                                G.r.random() < 0.5])(_logistic_args(G)[1]),
    # (a mixture: logit_probs required; the fuzzed None one must be refused)
    "discretized_logistic_mixture_nll_with_grad": lambda G: _logistic_args(G)[1] + [G.r.choice([0, 1, 2]),
                                                                                   G.r.random() < 0.5],
    "dropin_normal_nll": lambda G: _dropin(G, 3, _nll_extra(G), False, 3),
    "dropin_normal_nll_backward": lambda G: _dropin(G, 3, _nll_extra(G), True, 3),
    "dropin_normal_kl": lambda G: _dropin(G, 4, [0.5], False, 4),
    "dropin_normal_kl_backward": lambda G: _dropin(G, 4, [0.5], True, 4),
    "dropin_bce_with_logits": lambda G: _dropin(G, 4, [1.0], False, 2, optional=2),
    "dropin_bce_with_logits_backward": lambda G: _dropin(G, 4, [1.0], True, 2, optional=2),
    "dropin_normal_nll_with_grad": lambda G: _dropin(G, 3, _nll_extra(G), False, 3) + [_mask(G, 3)],
    "dropin_normal_kl_with_grad": lambda G: _dropin(G, 4, [0.5], False, 4) + [_mask(G, 4)],
    "dropin_bce_with_logits_with_grad": lambda G: _dropin(G, 4, [1.0], False, 2, optional=2) + [_mask(G, 2)],
    "dropin_normal_rsample": lambda G: _rsample(G, False),
    "dropin_normal_rsample_backward": lambda G: _rsample(G, True),
}
INDEX_ARGS = {"sliced_wasserstein_projected_backward": (3, 4)}  # perm_x, perm_y
KNOWN = {f"{op}.default" for op in TEMPLATES}


def _special(G, t):
    v = t.double().contiguous()  # (values past the dtype's range become inf in the cast back)
    if G.r.random() < 0.4:  # one special value somewhere
        if v.numel():
            v.view(-1)[G.r.randrange(v.numel())] = G.r.choice(SPECIAL_VALUES)
    else:
        v = torch.full_like(v, G.r.choice(SPECIAL_VALUES))
    return v.to(t.dtype)


def _reshape(G, t):
    shape = list(t.shape)
    choice = G.r.randrange(5)
    if choice == 0 and shape:
        shape.pop(G.r.randrange(len(shape)))
    elif choice == 1:
        shape.insert(G.r.randrange(len(shape) + 1), G.r.choice([0, 1, 2, 5]))
    elif choice == 2 and shape:
        shape[G.r.randrange(len(shape))] = G.r.choice([0, 1, 5, 65])
    elif choice == 3:
        shape = [G.r.choice([0, 5])]  # empty or (5,): the grads of issue 9
    else:
        shape = []
    return G.t(*shape, dtype=t.dtype) if t.is_floating_point() else torch.zeros(shape, dtype=t.dtype,
                                                                                 device=t.device)


def _bad_index(G, t):
    N = t.shape[-1] if t.dim() else 1
    t = t.contiguous().clone()
    choice = G.r.randrange(5)
    if t.numel() == 0 or choice == 4:
        return t.to(G.r.choice([torch.int64, torch.float32, torch.int16]))
    flat = t.view(-1)
    j = G.r.randrange(flat.numel())
    if choice == 0:
        flat[j] = G.r.choice([N, N + 1, 2**31 - 1, 1000])
    elif choice == 1:
        flat[j] = G.r.choice([-1, -N, -(2**31)])
    elif choice == 2:  # a repeated index: another entry left unwritten
        flat[j] = flat[(j + 1) % flat.numel()]
    else:
        flat.fill_(0)
    return t


def _noncontiguous(G, t):
    if t.dim() >= 2 and t.shape[-1] > 1 and t.shape[-2] > 1:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return torch.stack([t, t], -1)[..., 0]  # strided


def _mutate(G, op, args):
    i = G.r.randrange(len(args))
    a = args[i]
    m = G.r.random()
    if i in INDEX_ARGS.get(op, ()) and m < 0.6:
        args[i] = _bad_index(G, a)
    elif isinstance(a, torch.Tensor):
        if m < 0.2:
            args[i] = a.to(G.r.choice(BAD_DTYPES + FLOAT_DTYPES))
        elif m < 0.45:
            args[i] = _reshape(G, a)
        elif m < 0.7 and a.is_floating_point():
            args[i] = _special(G, a)
        elif m < 0.8:
            args[i] = _noncontiguous(G, a)
        elif m < 0.85:
            args[i] = a.to("meta")  # another device (the fake implementations answer)
        elif m < 0.9 and torch.cuda.is_available():
            args[i] = a.to("cpu" if a.is_cuda else "cuda")
        else:
            args[i] = None
    elif a is None:
        args[i] = G.t(*[G.size(1, 3) for _ in range(G.r.randint(0, 3))])
    elif isinstance(a, bool):
        args[i] = not a
    elif isinstance(a, int):
        args[i] = G.r.choice([0, -1, -(2**40), 2**40, 2**62, 7])
    elif isinstance(a, float):
        args[i] = G.r.choice([0.0, -1.0, 0.5, math.nan, math.inf, 1e300, 1e-300])
    elif isinstance(a, str):
        args[i] = G.r.choice(["gaussian", "", "RBF"])
    elif isinstance(a, list):
        args[i] = G.r.choice([[], [0.0], [-1.0], [math.nan], [math.inf], [1.0] * 20, [1e-300, 1e300]])
    return args


def make_case(op, i, device="cpu"):
    """(args, description) of case i of an op: a valid call, mutated in 3 cases out of 4."""
    G = Gen(op, i, device)
    args = TEMPLATES[op.split(".")[0]](G)
    mutations = G.r.choice([0, 1, 1, 2])
    for _ in range(mutations):
        args = _mutate(G, op.split(".")[0], args)
    return args, f"{op} case {i} ({mutations} mutation(s)): ({', '.join(_describe(a) for a in args)})"


def _describe(a):
    if isinstance(a, torch.Tensor):
        vals = ""
        if a.is_floating_point() and a.device.type != "meta" and a.numel():
            s = a.detach().cpu().double()
            vals = f" nan={int(s.isnan().sum())} inf={int(s.isinf().sum())} max|.|={s.abs().nan_to_num(0).max():.3g}"
        elif a.dtype in (torch.int32, torch.int64) and a.numel() and a.device.type != "meta":
            vals = f" min={int(a.min())} max={int(a.max())}"
        contig = "" if a.is_contiguous() else " non-contiguous"
        return f"Tensor{tuple(a.shape)} {str(a.dtype)[6:]} {a.device.type}{contig}{vals}"
    return repr(a)


def registered_ops():
    """Every op and overload registered under the fastvae namespace, as 'name.overload'."""
    import fastvae  # noqa: F401  (loads the extension and its Python registrations)
    names = [n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastvae::")]
    out = set()
    for name in names:
        packet = getattr(torch.ops.fastvae, name)
        out.update(f"{name}.{ov}" for ov in packet.overloads())
    return out


def _call(op, args):
    name, overload = op.split(".")
    return getattr(getattr(torch.ops.fastvae, name), overload)(*args)


def _device_failure(e):
    """A Python exception that still means memory was corrupted or a kernel faulted on the device."""
    msg = str(e)
    return any(s in msg for s in ("illegal memory access", "device-side assert", "misaligned address",
                                  "unspecified launch failure"))


def run_child(seed_cases):
    """The child: every case of every op, announced on stdout before the call."""
    faulthandler.enable()
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    n = 0
    for device in devices:
        for op in sorted(registered_ops()):
            for i in range(seed_cases):
                print(f"CASE {device} {op} {i}", flush=True)
                args, desc = make_case(op, i, device)
                try:
                    _call(op, args)
                except Exception as e:  # noqa: BLE001  (any Python exception is an acceptable answer)
                    if _device_failure(e):
                        print(f"DEVICE FAILURE {desc}: {e}", flush=True)
                        sys.exit(3)
                n += 1
    print(f"DONE {n}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# the tests


def test_fuzzer_knows_every_registered_op():
    found = registered_ops()
    unknown = found - KNOWN
    assert not unknown, f"ops the fuzzer does not know how to call (add a template to TEMPLATES): {sorted(unknown)}"
    assert not KNOWN - found, f"templates of ops that are not registered: {sorted(KNOWN - found)}"


def _run_fuzzer(cases, root):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(cases)], capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT_S, env=env, cwd=root)


def _fuzz_failure(r):
    """None if the child ran every case; else what killed it, and the case it was running."""
    if r.returncode == 0 and "DONE" in r.stdout:
        return None
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("CASE ")]
    what = f"signal {-r.returncode}" if r.returncode < 0 else f"exit code {r.returncode}"
    if not lines:
        return f"the fuzzer child died ({what}) before its first case:\n{r.stderr[-3000:]}"
    _, device, op, i = lines[-1].split()
    _, desc = make_case(op, int(i), device)
    return f"{what} in {desc}\nstdout tail:\n{r.stdout[-1000:]}\nstderr tail:\n{r.stderr[-3000:]}"


@pytest.mark.slow
def test_no_op_call_kills_the_process():
    import fastvae
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastvae.__file__)))
    r = _run_fuzzer(CASES_PER_OP, root)
    failure = _fuzz_failure(r)
    assert failure is None, failure


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        sys.path.insert(0, os.getcwd())
        run_child(int(sys.argv[2]))
    elif sys.argv[1] == "--case":  # reproduce one case: --case OP INDEX [DEVICE]
        sys.path.insert(0, os.getcwd())
        faulthandler.enable()
        args, desc = make_case(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "cpu")
        print(desc, flush=True)
        print(_call(sys.argv[2], args))


# ---- the cases of issue 9, one by one: a clear error (naming the op and the argument), or a defined result ------

ops = torch.ops.fastvae


def _sw_forward(B=2, L=3, N=7, with_y=True, device="cpu"):
    g = torch.Generator().manual_seed(4)
    px = torch.randn(B, L, N, generator=g).to(device)
    py = torch.randn(B, L, N, generator=g).to(device) if with_y else None
    _, perm_x, perm_y = ops.sliced_wasserstein_projected(px, py, 2.0)
    return px, py, perm_x, perm_y


@pytest.mark.parametrize("bad", ["past the end", "negative", "repeated"])
@pytest.mark.parametrize("which", ["perm_x", "perm_y"])
def test_sw_backward_refuses_a_perm_that_is_not_a_permutation(bad, which):
    px, py, perm_x, perm_y = _sw_forward()
    perm = (perm_x if which == "perm_x" else perm_y).clone()
    perm[1, 2, 3] = {"past the end": 7, "negative": -1, "repeated": perm[1, 2, 4]}[bad]
    args = [perm, perm_y] if which == "perm_x" else [perm_x, perm]
    with pytest.raises(ValueError, match=rf"fastvae.sliced_wasserstein_projected_backward: {which} must hold a "
                                         rf"permutation of 0 .. 6 in every row .*; row 5 is not one"):
        ops.sliced_wasserstein_projected_backward(torch.ones(2), px, py, *args, 2.0, True)


def test_sw_backward_checks_grad_and_perm_dtype():
    px, py, perm_x, perm_y = _sw_forward()
    for grad in (torch.ones(0), torch.ones(5), torch.ones(())):
        with pytest.raises(ValueError, match=r"sliced_wasserstein_projected_backward: grad must have shape \[2\]"):
            ops.sliced_wasserstein_projected_backward(grad, px, py, perm_x, perm_y, 2.0, True)
    with pytest.raises(TypeError, match="perm_x must be an int32 tensor; got Long"):
        ops.sliced_wasserstein_projected_backward(torch.ones(2), px, py, perm_x.long(), perm_y, 2.0, True)
    with pytest.raises(TypeError, match="grad must be a floating-point tensor; got Int"):
        ops.sliced_wasserstein_projected_backward(torch.ones(2, dtype=torch.int32), px, py, perm_x, perm_y, 2.0,
                                                  True)


def test_mmd_backward_checks_its_grad():
    x = torch.randn(1, 6, 2, dtype=torch.float64)
    for grad in (torch.ones(0, dtype=torch.float64), torch.ones(5, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"fastvae.mmd_backward: grad must have shape \[1\]; got \[\d\]"):
            ops.mmd_backward(grad, x, None, None, "rbf", [1.0], True, False)
    with pytest.raises(TypeError, match="fastvae.mmd_backward: grad must be a floating-point tensor"):
        ops.mmd_backward(torch.ones(1, dtype=torch.bool), x, None, None, "rbf", [1.0], True, False)


def test_seed_is_checked_by_every_random_op():
    mu = torch.zeros(2, 3)
    cases = {
        "reparameterize": lambda s: ops.reparameterize(mu, mu, s, None),
        "reparameterize_backward": lambda s: ops.reparameterize_backward(mu, mu, s, None),
        "reparameterize_kl": lambda s: ops.reparameterize_kl(mu, mu, s),
        "reparameterize_kl_backward": lambda s: ops.reparameterize_kl_backward(mu, torch.zeros(2), mu, mu, s),
        "reparameterize_tril": lambda s: ops.reparameterize_tril(mu, torch.eye(3).expand(2, 3, 3), s, None),
        "reparameterize_tril_backward": lambda s: ops.reparameterize_tril_backward(mu, torch.zeros(2),
                                                                                   torch.eye(3).expand(2, 3, 3),
                                                                                   s, None),
        "_normals": lambda s: ops._normals(s, 0, 4),
        "random_directions": lambda s: ops.random_directions(s, 3, 2),
        "mmd": lambda s: ops.mmd(mu[None], None, s, "imq", [1.0], True),
        "mmd_backward": lambda s: ops.mmd_backward(torch.ones(1), mu[None], None, s, "imq", [1.0], True, False),
    }
    for op, call in cases.items():
        with pytest.raises(TypeError, match=rf"fastvae.{op}: seed must be an int64 tensor; got Float"):
            call(torch.tensor([1.0]))
        with pytest.raises(ValueError, match=rf"fastvae.{op}: seed must have one element; got shape \[2\]"):
            call(torch.tensor([1, 2]))
        call(torch.tensor(5))  # 0-dim is one element


def test_normals_range_is_checked():
    for start, n in ((-1, 4), (0, -1), (2**62, 2**62)):
        with pytest.raises(ValueError, match="fastvae._normals: start and n must be >= 0"):
            ops._normals(torch.tensor([1]), start, n)


def test_zero_sized_inputs_give_defined_results(device="cpu"):
    """B = 0: empty outputs; D = 0: sums over nothing, 0 (never uninitialised memory)."""
    def z(*shape):
        return torch.zeros(shape, device=device)
    seed = torch.tensor([3], device=device)
    assert torch.equal(ops.gaussian_nll(z(4, 0), z(4, 0), None), z(4))
    assert torch.equal(ops.gaussian_nll(z(4, 0), z(2, 4, 0), z(2, 4, 0)), z(2, 4))
    assert torch.equal(ops.bernoulli_nll(z(4, 0), z(4, 0)), z(4))
    assert torch.equal(ops.kl_normal(z(4, 0), z(4, 0), None, z(0)), z(4))
    assert torch.equal(ops.reparameterize_kl(z(4, 0), z(4, 0), seed)[1], z(4))
    assert ops.reparameterize_tril(z(3, 0), z(3, 0, 0), seed, None)[1].tolist() == [0.0] * 3
    # a per-feature parameter's gradient over no rows: zeros of its shape
    _, glv = ops.gaussian_nll_backward(z(0), z(0, 3), z(0, 3), z(3) + 1, True, True)
    assert torch.equal(glv, z(3))
    grads = ops.kl_normal_backward(z(0), z(0, 3), z(0, 3), z(3), z(3), [True, True, True, True])
    assert torch.equal(grads[2], z(3)) and torch.equal(grads[3], z(3))
    assert ops.mmd(z(0, 5, 2), None, None, "rbf", [1.0], True).shape == (0,)
    assert ops.mmd_backward(z(0), z(0, 5, 2), z(0, 4, 2), None, "imq", [1.0], True, True)[1].shape == (0, 4, 2)
    out, perm_x, _ = ops.sliced_wasserstein_projected(z(0, 2, 5), None, 2.0)
    assert out.shape == (0,) and perm_x.shape == (0, 2, 5)
    assert ops.sliced_wasserstein_projected_backward(z(0), z(0, 2, 5), None, perm_x, perm_x, 2.0, False)[0].shape \
        == (0, 2, 5)


@pytest.mark.cuda
def test_zero_sized_inputs_give_defined_results_cuda():
    torch.cuda.empty_cache()
    test_zero_sized_inputs_give_defined_results("cuda")


@pytest.mark.cuda
def test_cuda_ops_refuse_tensors_of_another_device():
    x = torch.zeros(2, 3, device="cuda")
    with pytest.raises(ValueError, match=r"fastvae.reparameterize_backward: seed must be on the device of logvar"):
        ops.reparameterize_backward(x, x, torch.tensor([1]), None)
    with pytest.raises(ValueError, match=r"fastvae.gaussian_nll_backward: grad must be on the device of mean"):
        ops.gaussian_nll_backward(torch.ones(2), x, x, None, True, False)
    with pytest.raises(ValueError, match=r"fastvae.mmd: seed must be on the device of x"):
        ops.mmd(x[None], x[None], torch.tensor([1]), "rbf", [1.0], True)
    with pytest.raises(ValueError, match=r"fastvae.kl_normal: logvar_prior must be on the device of mu"):
        ops.kl_normal(x, x, None, torch.zeros(3))


@pytest.mark.cuda
def test_cuda_sw_backward_skips_indices_out_of_range():
    """On CUDA a bad perm cannot be refused without a device synchronisation: the kernel skips the index (never
    reads or writes out of bounds) and the entries it does not reach stay 0."""
    px, py, perm_x, perm_y = _sw_forward(device="cuda")
    bad = perm_x.clone()
    bad[0, 0, 0], bad[0, 0, 1] = 2**31 - 1, -5
    gpx, gpy = ops.sliced_wasserstein_projected_backward(torch.ones(2, device="cuda"), px, py, bad, perm_y, 2.0,
                                                         True)
    torch.cuda.synchronize()
    good, _ = ops.sliced_wasserstein_projected_backward(torch.ones(2, device="cuda"), px, py, perm_x, perm_y, 2.0,
                                                        True)
    touched = torch.zeros_like(px, dtype=torch.bool)
    touched[0, 0, perm_x[0, 0, 2:].long()] = True
    assert torch.equal(gpx[0, 0][touched[0, 0]], good[0, 0][touched[0, 0]])
    assert (gpx[0, 0][~touched[0, 0]] == 0).all() and torch.equal(gpx[1:], good[1:])
