"""The encoder and decoder networks: MLPs, and a small conv front (ConvEncoder) and back (ConvDecoder) for images.

An encoder maps x (and a CVAE's one-hot label) to the posterior's statistics; a decoder maps z (and the label) to the
likelihood's outputs. `count_parameters` counts what `VAE` builds before anything is allocated.
"""
import math

from torch import nn

# The activations between layers, by name (the IWAE paper's networks use tanh).
ACTIVATIONS = {"silu": nn.SiLU, "tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(sizes, final_activation=False, activation="silu"):
    """Linear layers of the given widths with `activation` between them (and after the last with final_activation)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (H, W -> H/4, W/4), flattened."""

    def __init__(self, shape, channels=(32, 64), activation="silu"):
        super().__init__()
        c, h, w = shape
        if h % 4 or w % 4:
            raise ValueError(f"conv=True needs an image height and width divisible by 4; got shape {tuple(shape)}")
        act = ACTIVATIONS[activation]
        self.net = nn.Sequential(
            nn.Conv2d(c, channels[0], 4, 2, 1), act(),
            nn.Conv2d(channels[0], channels[1], 4, 2, 1), act(),
            nn.Flatten())
        self.out_features = channels[1] * (h // 4) * (w // 4)

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    """The mirror of ConvEncoder: features -> (channels[1], H/4, W/4) -> two stride-2 transposed convs."""

    def __init__(self, in_features, shape, out_channels, channels=(32, 64), activation="silu"):
        super().__init__()
        c, h, w = shape
        act = ACTIVATIONS[activation]
        self.grid = (channels[1], h // 4, w // 4)
        self.fc = nn.Linear(in_features, channels[1] * (h // 4) * (w // 4))
        self.net = nn.Sequential(
            act(),
            nn.ConvTranspose2d(channels[1], channels[0], 4, 2, 1), act(),
            nn.ConvTranspose2d(channels[0], out_channels, 4, 2, 1))

    def forward(self, h):
        return self.net(self.fc(h).reshape(-1, *self.grid))


def count_parameters(shape, latent_dim, n_stats, n_outputs, n_labels, hidden, conv, conv_channels):
    """The parameters of the networks VAE builds (an upper bound for the conv layers): an encoder from the data of
    `shape` (and n_labels one-hot inputs) to n_stats posterior statistics, a decoder from latent_dim (and the labels)
    to n_outputs values per data value."""
    def dense(sizes):
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    d, nc, data_dim = latent_dim, n_labels, math.prod(shape)
    if not conv:
        return dense([data_dim + nc, *hidden, n_stats]) + dense([d + nc, *hidden[::-1], data_dim * n_outputs])
    (c, h, w), (c0, c1) = shape, conv_channels
    grid = c1 * (h // 4) * (w // 4)
    convs = 17 * (c * c0 + c0 * c1 + c1 * c0 + c0 * c * n_outputs)    # 4x4 kernels and their biases
    dec_out = hidden[0] if hidden else d + nc
    return convs + dense([grid + nc, *hidden, n_stats]) + dense([d + nc, *hidden[::-1]]) + (dec_out + 1) * grid
