"""End to end: one training step (forward, loss, backward, Adam step) of fastvae.VAE, with fastvae ops vs the
same model on reference ops, eager and torch.compile'd. Reported as time per step and samples/s."""
import torch

import fastvae

from .ops import Op, Unavailable

INPUT_DIM = 784
LATENT_DIM = 32


def _model(backend, device, dtype, compiled=False):
    if not hasattr(fastvae, "VAE"):
        raise Unavailable("fastvae.VAE does not exist in this build (not merged yet)")
    torch.manual_seed(0)
    try:
        model = fastvae.VAE(INPUT_DIM, LATENT_DIM, backend=backend)
    except TypeError as e:
        raise Unavailable(f"fastvae.VAE(input_dim, latent_dim, backend=...) failed: {e}") from e
    model = model.to(device=device, dtype=dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fwd = torch.compile(model, dynamic=False) if compiled else model

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = fwd(x).loss
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def make(n, dtype, device, gen):
    return (torch.rand((n, INPUT_DIM), generator=gen).to(device=device, dtype=dtype),)


def vae_train_op():
    return Op(
        "vae_train_step", "e2e", [64, 256, 1024], [64], make,
        {
            "fastvae": lambda device, dtype: _model("fastvae", device, dtype),
            "eager": lambda device, dtype: _model("reference", device, dtype),
            "compile": lambda device, dtype: _model("reference", device, dtype, compiled=True),
        },
        lambda n: f"batch {n}",
        doc=f"fastvae.VAE({INPUT_DIM}, {LATENT_DIM}) default hidden dims; one step = forward, loss, backward, "
            "Adam step; the size is the batch")
