"""Why a run stops before its last epoch, each a one-line message that says where the last good checkpoint is: the
exceptions the trainer raises, and the checks of the loss, the test metrics and the parameters that raise
TrainingDiverged (a NaN/inf state is never saved)."""
import math

import torch
import torch.distributed as dist


class TrainingStopped(RuntimeError):
    """Training could not go on; the message (one line) says why and where the last good checkpoint is."""


class TrainingDiverged(TrainingStopped):
    """The loss, the test metrics or the parameters became NaN or inf; the last good checkpoint is kept."""


class WriteFailed(TrainingStopped):
    """A file of the run could not be written (a full disk, a read-only folder); the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, which fastvae.cli raises as KeyboardInterrupt("terminated by SIGTERM")) during training;
    the message says where the last checkpoint is."""


def finite_everywhere(sums, distributed):
    """Whether the loss, recon, kl and elbo sums of an epoch so far are finite on every rank."""
    ok = torch.isfinite(sums[:4]).all().to(torch.int32)
    if distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def nonfinite(model, test):
    """None when the test metrics and every parameter are finite, else what is not."""
    bad = [f"the test {k} ({v})" for k, v in test.items() if not math.isfinite(v)]
    bad += [f"parameter {n}" for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    return ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "") if bad else None


def diverged(what, epoch, step, ckpt_path, saved_epoch):
    """The TrainingDiverged of `what` becoming NaN or inf in an epoch, saying which checkpoint is kept."""
    kept = (f"the last good checkpoint, {ckpt_path} (epoch {saved_epoch}), is kept" if saved_epoch
            else "no checkpoint was written")
    return TrainingDiverged(f"{what} became NaN or inf in epoch {epoch + 1} (by step {step}); training stopped and "
                            f"{kept}. Try a lower --lr, --variance fixed, or --amp none.")
