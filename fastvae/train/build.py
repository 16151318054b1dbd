"""A run's model, built on the meta device first, so that nothing is allocated for a model that cannot be: its
weights checked against a state dict's names and shapes, its training memory against the device's; and the model
a checkpoint holds."""
import math
import os

import torch
from torch import nn

from .._checks import device_memory
from ..models import build_model
from .checkpoint import CheckpointError, load_checkpoint


def build_checked(config, device, *, state=None, batch_size=0, where="the model"):
    """The VAE that config (VAE arguments, as VAE.config and a checkpoint's model_config hold them) describes, on
    device. It is built on the meta device first (no memory): a state dict whose tensors lack the model's names or
    shapes, or (batch_size > 0: training) a model whose parameters, Adam state and one step's activations exceed the
    device's memory are refused before anything is allocated."""
    size = "latent_dims" if "latent_dims" in config else "latent_dim"
    sizes = f"{size} {config.get(size)}, hidden_dims {config.get('hidden_dims')}"
    try:
        with torch.device("meta"):
            meta = build_model(config)
    except RuntimeError as e:             # sizes whose tensors cannot even be described (numel overflows)
        raise ValueError(f"{where} cannot be built ({sizes}): {str(e).splitlines()[0]}") from None
    if state is not None:
        _check_state_shapes(meta, state, where)
    if batch_size:
        need, have = _training_bytes(meta, batch_size), device_memory(device)
        if have is not None and need > have:
            sizes += f", batch_size {batch_size}, n_samples {meta.n_samples}" + (
                f", n_projections {meta.n_projections}" if meta.divergence == "sliced" else "")
            raise ValueError(f"{where} needs about {need / 2**30:.1f} GiB to train ({sizes}), more than the "
                             f"{have / 2**30:.1f} GiB of {device}: lower one of them")
    model = build_model(config).to(device)     # built on the CPU (its generator), like VAE(...).to(device)
    if state is not None:
        model.load_state_dict(state)
    return model


def _check_state_shapes(model, state, where):
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"{k} is missing" for k in want if k not in got]
    problems += [f"{k} is not a parameter of the model" for k in got if k not in want]
    problems += [f"{k} has shape {got[k]}, the model's is {want[k]}" for k in want if k in got and got[k] != want[k]]
    if problems:
        raise CheckpointError(f"{where}: its weights do not fit the model it describes ({'; '.join(problems[:5])}"
                              + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "") + ")")


def _training_bytes(model, batch_size):
    """About what training needs: parameters, gradients and Adam's two moments, and the activations one step keeps
    (each layer's input and output, per sample and importance sample), in float32; the sliced-Wasserstein
    projections besides."""
    params = sum(p.numel() for p in model.parameters())
    pixels = math.prod(model.input_shape[1:]) if model.conv else 1
    per_sample = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            per_sample += m.in_features + m.out_features
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            per_sample += (m.in_channels + m.out_channels) * pixels
    rows = batch_size * model.n_samples
    sliced = model.n_projections * (model.latent_dim + 4 * rows) if model.divergence == "sliced" else 0
    return 4 * (4 * params + 2 * rows * per_sample + sliced)


def model_from_checkpoint(path, device="cpu"):
    """(model in eval mode, checkpoint dict). The model its model_config describes is checked on the meta device
    against the stored tensors (names and shapes) before anything is allocated, then against its data_info."""
    ckpt = load_checkpoint(path)
    try:
        model = build_checked(ckpt["model_config"], device, state=ckpt["model"], where=os.fspath(path))
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its 'model_config' does not describe a fastvae.VAE ({e})") from None
    shape = ckpt["data_info"]["shape"]
    if math.prod(shape) != model.data_dim or (model.conv and tuple(shape) != model.input_shape):
        raise CheckpointError(f"{path}: its 'data_info' shape {tuple(shape)} is not the model's input "
                              f"{model.input_shape}")
    return model.eval(), ckpt
