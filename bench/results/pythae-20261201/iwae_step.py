"""The IWAE step (k = 5, batch 100, 784-512-256-16, one thread) of fastvae, its reference ops and pythae, measured
alternately in one process (median of 40 steps): the check behind the README's note on the IWAE epoch times.
    PYTHONPATH=. python bench/results/pythae-20261201/iwae_step.py     (output: iwae_step.txt)"""
import time, torch, fastvae
from fastvae.bench import pythae_provider as pp
torch.set_num_threads(1)
x = torch.bernoulli(torch.rand(100, 784, generator=torch.Generator().manual_seed(0)))
def fv_step(backend):
    torch.manual_seed(0)
    m = fastvae.VAE(784, 16, likelihood="bernoulli", n_samples=5, backend=backend)
    opt = torch.optim.Adam(m.parameters())
    def step():
        opt.zero_grad(); m(x).loss.backward(); opt.step()
    return step
def bench(step, n=40):
    for _ in range(5): step()
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); step(); ts.append(time.perf_counter()-t)
    ts.sort(); return ts[len(ts)//2]*1e3
py = pp.pythae_step("iwae", "cpu", latent_dim=16, hidden_dims=(512,256), n_samples=5)
for name, st in [("fastvae", fv_step("fastvae")), ("eager", fv_step("reference")), ("pythae", lambda: py(x))]*2:
    print(name, f"{bench(st):.2f} ms")
m = fastvae.VAE(784, 16, likelihood="bernoulli", n_samples=5)
