"""End to end: one training step (forward, loss, backward, Adam step) of fastvae.VAE, with fastvae ops vs the
same model on reference ops, eager and torch.compile'd. Reported as time per step and samples/s.

vae_train_amp: the same step of a Bernoulli VAE on binary data in float32 and under bf16 autocast (the "-bf16"
providers: what `fastvae train --amp bf16`, and --amp auto on a CPU or GPU with native bf16 matmuls, runs), for
fastvae, its reference ops (eager) and pythae (fastvae/bench/pythae_provider.py: the same MLP inside pythae's VAE)."""
import contextlib

import torch

import fastvae

from .ops import Op, Unavailable

INPUT_DIM = 784
LATENT_DIM = 32


def _model(backend, device, dtype, compiled=False, likelihood="gaussian", amp=None):
    if not hasattr(fastvae, "VAE"):
        raise Unavailable("fastvae.VAE does not exist in this build (not merged yet)")
    torch.manual_seed(0)
    try:
        model = fastvae.VAE(INPUT_DIM, LATENT_DIM, backend=backend, likelihood=likelihood)
    except TypeError as e:
        raise Unavailable(f"fastvae.VAE(input_dim, latent_dim, backend=...) failed: {e}") from e
    model = model.to(device=device, dtype=dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fwd = torch.compile(model, dynamic=False) if compiled else model
    device_type = torch.device(device).type

    def autocast():
        return torch.autocast(device_type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()

    def step(x):
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = fwd(x).loss
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def make(n, dtype, device, gen):
    return (torch.rand((n, INPUT_DIM), generator=gen).to(device=device, dtype=dtype),)


def vae_train_op():
    return Op(
        "vae_train_step", "e2e", [64, 128, 256, 1024], [64, 128, 256], make,
        {
            "fastvae": lambda device, dtype: _model("fastvae", device, dtype),
            "eager": lambda device, dtype: _model("reference", device, dtype),
            "compile": lambda device, dtype: _model("reference", device, dtype, compiled=True),
        },
        lambda n: f"batch {n}",
        doc=f"fastvae.VAE({INPUT_DIM}, {LATENT_DIM}) default hidden dims; one step = forward, loss, backward, "
            "Adam step; the size is the batch")


def _pythae(device, dtype, amp=None):
    from .pythae_provider import pythae_step
    return pythae_step("vae", device, dtype, amp=amp, latent_dim=LATENT_DIM, hidden_dims=(512, 256))


def make_binary(n, dtype, device, gen):
    return (torch.bernoulli(torch.rand((n, INPUT_DIM), generator=gen), generator=gen).to(device=device, dtype=dtype),)


def _amp_providers():
    """fastvae, its reference ops (eager) and pythae, each in float32 and under bf16 autocast ('-bf16')."""
    providers = {}
    for amp, suffix in ((None, ""), ("bf16", "-bf16")):
        providers["fastvae" + suffix] = lambda device, dtype, a=amp: _model("fastvae", device, dtype,
                                                                              likelihood="bernoulli", amp=a)
        providers["eager" + suffix] = lambda device, dtype, a=amp: _model("reference", device, dtype,
                                                                            likelihood="bernoulli", amp=a)
        providers["pythae" + suffix] = lambda device, dtype, a=amp: _pythae(device, dtype, amp=a)
    return providers


_AMP_DOC = (f"fastvae.VAE({INPUT_DIM}, {LATENT_DIM}, likelihood='bernoulli'), hidden 512, 256 (SiLU), on binary "
            "data; one step = forward, loss, backward, Adam step, in float32 and under bf16 autocast ('-bf16'); "
            "pythae: its VAE (bce) with the same MLP; the size is the batch")


def vae_amp_op():
    return Op("vae_train_amp", "e2e", [64, 128, 256, 1024, 4096], [64, 128, 256], make_binary, _amp_providers(),
              lambda n: f"batch {n}", cuda_sizes=[64, 256, 1024, 4096], doc=_AMP_DOC)
