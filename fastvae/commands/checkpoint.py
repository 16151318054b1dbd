"""The model of a checkpoint as `fastvae eval` and `fastvae sample` load it: a refused checkpoint is a one-line exit
naming it (and an intact previous checkpoint beside it)."""
import os

from .. import train as tr


def load(args):
    try:
        device = tr.pick_device(args.device)
        return (*tr.model_from_checkpoint(args.checkpoint, device), device)
    except ValueError as e:
        raise SystemExit(f"fastvae {args.command}: {e}{previous_hint(args.checkpoint, e)}")


def previous_hint(path, error):
    """A run's refused checkpoint with an intact previous one beside it: say so."""
    previous = tr.previous_path(os.path.join(path, tr.CHECKPOINT_NAME) if os.path.isdir(path) else path)
    try:
        epoch = tr.load_checkpoint(previous)["epoch"] if isinstance(error, tr.CheckpointError) else None
    except tr.CheckpointError:
        epoch = None
    return "" if epoch is None else f"; the previous checkpoint beside it, {previous} (epoch {epoch}), is intact"
