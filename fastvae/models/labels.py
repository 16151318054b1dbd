"""The labels a model is conditioned on: none, or a CVAE's class labels, one-hot into the encoder and the decoder.
A part checks the labels y of a call and turns them into the extra network inputs (one_hot), and says which labels
generation uses when none are given (default)."""
import torch
from torch import nn


class Labels(nn.Module):
    """What a model is conditioned on."""

    n_classes = 0       # the one-hot inputs it adds to the encoder and the decoder

    def one_hot(self, y, n, device, dtype):
        """The labels y of n inputs, checked -> the extra network inputs (n, n_classes) in dtype, or None."""
        raise NotImplementedError

    def default(self, n, device):
        """The labels of n generated samples when none are given (None: the model takes none)."""
        raise NotImplementedError


class NoLabels(Labels):
    """An unconditional model: no labels, no extra inputs."""

    def one_hot(self, y, n, device, dtype):
        if y is not None:
            raise ValueError("labels y were given to a model with n_classes=0 (not a CVAE)")
        return None

    def default(self, n, device):
        return None


class OneHotLabels(Labels):
    """A CVAE: integer labels y (B,) in [0, n_classes), one-hot into the encoder and the decoder."""

    unlabelled = None   # the label that marks an unlabelled input (None: every input must have one)
    kind = "CVAE"       # what the messages call the model

    def __init__(self, n_classes):
        super().__init__()
        self.n_classes = n_classes

    def check(self, y, n, device, partial=False):
        """The labels y of n inputs, checked: an integer tensor (n,) on device of class ids (or, partial=True, the
        `unlabelled` mark too)."""
        unlabelled = self.unlabelled if partial else None
        if y is None:
            what = "" if unlabelled is None else f": class ids, or {unlabelled} for an unlabelled input"
            raise ValueError(f"this {self.kind} (n_classes={self.n_classes}) needs labels y{what}")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a tensor of integer class labels; got {type(y).__name__}")
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise TypeError(f"y must hold integer class labels; got dtype {y.dtype}")
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) (one label per sample); got {tuple(y.shape)}")
        if y.device != device:
            raise ValueError(f"y must be on the model's device {device}; got {y.device}")
        # one_hot checks the range on the CPU only; one check (one sync) here covers every device. A compiled
        # graph skips it (a data-dependent branch would break the graph).
        lo = 0 if unlabelled is None else unlabelled
        if not torch.compiler.is_compiling() and bool(((y < lo) | (y >= self.n_classes)).any()):
            also = "" if unlabelled is None else f" or {unlabelled} (unlabelled)"
            raise ValueError(f"y must hold class labels in [0, {self.n_classes}){also}; found labels from "
                             f"{int(y.min())} to {int(y.max())}")
        return y

    def one_hot(self, y, n, device, dtype):
        y = self.check(y, n, device)
        return nn.functional.one_hot(y.long(), self.n_classes).to(dtype)

    def default(self, n, device):
        return torch.arange(n, device=device) % self.n_classes      # the classes in turn


class SemiSupervisedLabels(OneHotLabels):
    """M2 (semi-supervised): the CVAE's labels, and in a training batch -1 for an input whose label is unknown
    (check accepts it; one_hot, which feeds the networks, does not)."""

    unlabelled = -1
    kind = "semi-supervised model"
