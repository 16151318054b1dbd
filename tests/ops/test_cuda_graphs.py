"""Every op captures into a CUDA graph and replays to its eager result (no op synchronises the host: seeds are read
on the device, the sliced-Wasserstein sort stays on the device), and the randomness drawn on the device is the
CPU's: the same seed gives the same random directions and MMD prior samples on CPU and CUDA; tied projections get
the CPU's (stable) sorting permutation. Marked `cuda`: skipped without a GPU."""
import pytest
import torch

import fastvae  # noqa: F401  (registers torch.ops.fastvae)

pytestmark = pytest.mark.cuda
DEV = "cuda"
ops = torch.ops.fastvae


def rand(*shape, seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEV)


def seed_t(v=1234):
    return torch.tensor([v], dtype=torch.int64, device=DEV)


def _cases():
    """name -> a function of no arguments calling one op on fixed CUDA inputs (every op of every family)."""
    mu, lv = rand(6, 5, seed=1), rand(6, 5, seed=2, scale=0.3)
    gz, g6 = rand(6, 5, seed=3), rand(6, seed=4)
    L = torch.linalg.cholesky(torch.eye(4, device=DEV) + 0.1 * (lambda a: a @ a.mT)(rand(3, 4, 4, seed=5)))
    mt = rand(3, 4, seed=6)
    x, xb = rand(6, 5, seed=7), torch.rand(6, 5, generator=torch.Generator().manual_seed(8)).to(DEV)
    xs, ys = rand(2, 9, 3, seed=9), rand(2, 7, 3, seed=10)
    g2 = rand(2, seed=11)
    # many rows (B L = 2 * 300 > 500 segments: where cub's segmented sort synchronised) and ties
    px = torch.round(rand(2, 300, 33, seed=12) * 2) / 2
    py = rand(2, 300, 33, seed=13)
    s = seed_t()
    c = {
        "reparameterize": lambda: ops.reparameterize(mu, lv, s, 2),
        "reparameterize_backward": lambda: ops.reparameterize_backward(rand(2, 6, 5, seed=14), lv, s, 2),
        "reparameterize_kl": lambda: ops.reparameterize_kl(mu, lv, s),
        "reparameterize_kl_backward": lambda: ops.reparameterize_kl_backward(gz, g6, mu, lv, s),
        "reparameterize_tril": lambda: ops.reparameterize_tril(mt, L, s, None),
        "reparameterize_tril_backward": lambda: ops.reparameterize_tril_backward(rand(3, 4, seed=15), rand(3, seed=16),
                                                                               L, s, None),
        "gaussian_nll": lambda: ops.gaussian_nll(x, mu, lv),
        "gaussian_nll_backward": lambda: ops.gaussian_nll_backward(g6, x, mu, lv, True, True),
        "bernoulli_nll": lambda: ops.bernoulli_nll(mu, xb),
        "bernoulli_nll_backward": lambda: ops.bernoulli_nll_backward(g6, mu, xb),
        "kl_normal": lambda: ops.kl_normal(mu, lv, None, lv[0]),
        "kl_normal_backward": lambda: ops.kl_normal_backward(g6, mu, lv, None, lv[0], [True, True, False, True]),
        "_normals": lambda: ops._normals(s, 3, 1000),
        "mmd rbf prior": lambda: ops.mmd(xs, None, None, "rbf", [0.5, 1.0], True),
        "mmd imq prior samples": lambda: ops.mmd(xs, None, s, "imq", [1.0], True),
        "mmd y": lambda: ops.mmd(xs, ys, None, "laplacian", [1.0, 2.0], False),
        "mmd_backward prior samples": lambda: ops.mmd_backward(g2, xs, None, s, "energy", [1.0], True, False),
        "mmd_backward y": lambda: ops.mmd_backward(g2, xs, ys, None, "rbf", [1.0], True, True),
        "sliced_wasserstein_projected": lambda: ops.sliced_wasserstein_projected(px, py, 2.0),
        "sliced_wasserstein_projected normal": lambda: ops.sliced_wasserstein_projected(px, None, 1.0),
        "sliced_wasserstein_projected_backward": lambda: ops.sliced_wasserstein_projected_backward(
            g2, px, py, *ops.sliced_wasserstein_projected(px, py, 2.0)[1:], 2.0, True),
        "random_directions": lambda: ops.random_directions(s, 5, 64),
    }
    # the drop-ins (row sums of 5; a per-feature operand of period 5) and the discretized logistics
    sc, tg = mu.abs() + 0.5, torch.rand(6, 5, generator=torch.Generator().manual_seed(17)).to(DEV)
    m5 = [True, True, False, True]
    xl = torch.round(rand(2, 3, 4, 4, seed=18).clamp(-1, 1) * 127.5) / 127.5
    means, lsc = rand(2, 3, 4, 4, 1, seed=19), rand(2, 3, 4, 4, 1, seed=20, scale=0.3) - 1.0  # the mixture dim last
    lp, mm, ls = rand(2, 3, 4, 4, 5, seed=21), rand(2, 3, 4, 4, 5, seed=22), rand(2, 3, 4, 4, 5, seed=23, scale=0.3) - 1
    c.update({
        "dropin_normal_nll": lambda: ops.dropin_normal_nll(x, mu, sc[0], 0, 0.0, 0.9, 0.5, 5),
        "dropin_normal_nll_backward": lambda: ops.dropin_normal_nll_backward(g6, x, mu, sc, 1, 1e-6, 0.0, 0.5, 5,
                                                                             [True, True, True]),
        "dropin_normal_kl": lambda: ops.dropin_normal_kl(mu, sc, lv[0], sc[1], 1.0, 5),
        "dropin_normal_kl_backward": lambda: ops.dropin_normal_kl_backward(g6, mu, sc, lv[0], sc[1], 1.0, 5, m5),
        "dropin_normal_rsample": lambda: ops.dropin_normal_rsample(mu, sc, s, 2),
        "dropin_normal_rsample_backward": lambda: ops.dropin_normal_rsample_backward(rand(2, 6, 5, seed=24), sc, s, 2,
                                                                                     [True, True]),
        "dropin_bce_with_logits": lambda: ops.dropin_bce_with_logits(mu, tg, None, sc[0], 1.0, 1),
        "dropin_bce_with_logits_backward": lambda: ops.dropin_bce_with_logits_backward(
            g6, mu, tg, sc[2], None, 0.5, 5, [True, True]),
        "discretized_logistic_nll single": lambda: ops.discretized_logistic_nll(xl, None, means, lsc, 8),
        "discretized_logistic_nll mixture": lambda: ops.discretized_logistic_nll(xl, lp, mm, ls, 8),
        "discretized_logistic_nll_backward": lambda: ops.discretized_logistic_nll_backward(
            rand(2, seed=25), xl, lp, mm, ls, 8),
    })
    return c


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


NAMES = ["reparameterize", "reparameterize_backward", "reparameterize_kl", "reparameterize_kl_backward",
         "reparameterize_tril", "reparameterize_tril_backward", "gaussian_nll", "gaussian_nll_backward",
         "bernoulli_nll", "bernoulli_nll_backward", "kl_normal", "kl_normal_backward", "_normals", "mmd rbf prior",
         "mmd imq prior samples", "mmd y", "mmd_backward prior samples", "mmd_backward y",
         "sliced_wasserstein_projected", "sliced_wasserstein_projected normal",
         "sliced_wasserstein_projected_backward", "random_directions", "dropin_normal_nll",
         "dropin_normal_nll_backward", "dropin_normal_kl", "dropin_normal_kl_backward", "dropin_normal_rsample",
         "dropin_normal_rsample_backward", "dropin_bce_with_logits", "dropin_bce_with_logits_backward",
         "discretized_logistic_nll single", "discretized_logistic_nll mixture", "discretized_logistic_nll_backward"]
# CPU-only ops (the forwards with gradients: the CPU is compute-bound where a GPU is not)
CPU_ONLY = {"dropin_normal_nll_with_grad", "dropin_normal_kl_with_grad", "dropin_bce_with_logits_with_grad",
            "discretized_logistic_nll_with_grad", "discretized_logistic_mixture_nll_with_grad"}


def test_every_op_has_a_case():
    schemas = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("fastvae::")}
    assert schemas - CPU_ONLY <= {n.split(" ")[0] for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_every_op_captures_and_replays(name):
    cases = _cases()
    assert sorted(cases) == sorted(NAMES)
    fn = cases[name]
    eager = [t.clone() for t in _flat(fn())]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as CUDA graphs require
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # fails if the op synchronises the host or copies from pageable memory
        captured = _flat(fn())
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        for e, r in zip(eager, captured):
            torch.testing.assert_close(r, e, rtol=0, atol=0, equal_nan=True, msg=name)  # deterministic kernels


def test_random_directions_same_on_cuda_and_cpu():
    cpu = ops.random_directions(torch.tensor([99]), 7, 33)
    dev = ops.random_directions(seed_t(99), 7, 33)
    assert dev.device.type == "cuda"
    # the same float32 normals; the normalisation in float64 may differ in the last double bit, which float32
    # rounding almost always hides: one float32 ulp at most
    torch.testing.assert_close(dev.cpu(), cpu, rtol=torch.finfo(torch.float32).eps, atol=0)


def test_mmd_prior_samples_same_on_cuda_and_cpu():
    x = rand(3, 20, 4, seed=3, dtype=torch.float64)
    cpu = ops.mmd(x.cpu(), None, torch.tensor([7]), "imq", [1.0, 2.0], True)
    dev = ops.mmd(x, None, seed_t(7), "imq", [1.0, 2.0], True)
    # the same prior samples; the pair sums are added in another order (float64: ~1e-15 relative per term)
    torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sort_ties_give_the_cpu_permutation(dtype):
    # values from a set of 3 (with -0.0 and +0.0 among them), rows B L = 2 * 260 > 500
    g = torch.Generator().manual_seed(5)
    vals = torch.tensor([-0.0, 0.0, 1.5], dtype=dtype)
    px = vals[torch.randint(0, 3, (2, 260, 17), generator=g)]
    _, perm_cpu, _ = ops.sliced_wasserstein_projected(px, None, 2.0)
    _, perm_dev, _ = ops.sliced_wasserstein_projected(px.to(DEV), None, 2.0)
    assert torch.equal(perm_dev.cpu(), perm_cpu)


# ---- limits that went: more than 16 bandwidths, more than 65535 batches --------------------------------------

@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_more_than_16_bandwidths_matches_cpu(kernel):
    # the launchers run groups of 16 bandwidths and add them up; the CPU adds every bandwidth in one pass
    bws = [0.25 * (h + 1) for h in range(40)]
    x, y = rand(2, 30, 3, seed=1, dtype=torch.float64), rand(2, 25, 3, seed=2, dtype=torch.float64)
    g = rand(2, seed=3, dtype=torch.float64)
    for yy in (y, None):
        cpu = ops.mmd(x.cpu(), None if yy is None else yy.cpu(), None, kernel, bws, True)
        dev = ops.mmd(x, yy, None, kernel, bws, True) if kernel == "rbf" or yy is not None else None
        if dev is None:
            continue
        # float64: 40 bandwidths x a few hundred pairs summed in another order
        torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-11, atol=1e-12)
        gc = ops.mmd_backward(g.cpu(), x.cpu(), None if yy is None else yy.cpu(), None, kernel, bws, True, True)
        gd = ops.mmd_backward(g, x, yy, None, kernel, bws, True, True)
        for a, b in zip(gd, gc):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-12)


def test_mmd_more_than_65535_batches_matches_cpu():
    # batches were the grid's y dimension (at most 65535): the launchers now loop over groups of batches
    x, y = rand(70000, 8, 4, seed=4), rand(70000, 8, 4, seed=5)
    cpu = ops.mmd(x.cpu(), y.cpu(), None, "imq", [1.0], False)
    dev = ops.mmd(x, y, None, "imq", [1.0], False)
    # float32 pair sums of 8 x 8 points in another order: a few ulp of the terms
    torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-4, atol=1e-5)
    g = rand(70000, seed=6)
    for a, b in zip(ops.mmd_backward(g, x, y, None, "imq", [1.0], False, True),
                    ops.mmd_backward(g.cpu(), x.cpu(), y.cpu(), None, "imq", [1.0], False, True)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)
