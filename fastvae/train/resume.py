"""Resuming a run: the model, its optimizers, the epoch and every RNG stream restored from the run's checkpoint, so
that a resumed run continues exactly as if it had not stopped."""
import torch

from .checkpoint import CheckpointError
from .distributed import log
from .settings import SETTINGS, is_kind, recorded


def resume_run(found, cfg, model, opts, data, data_gen, noise_gen, rank, world):
    """Restores a run from its checkpoint (load_run_checkpoint's (path, checkpoint, note)) into model, its
    optimizers opts (name -> optimizer) and the generators; applies the settings that may change (Setting.resume
    "apply"; the others were refused by resolve_config). Returns (epoch, step, metrics)."""
    path, ckpt, note = found
    if note:
        log(f"note: {note}", rank)
    # the op backend may change between runs (same model, same parameters); nothing else may
    diff = {k: (ckpt["model_config"].get(k), v) for k, v in model.config.items()
            if k != "backend" and ckpt["model_config"].get(k) != v}
    if diff:
        raise CheckpointError(f"{path} holds another model than the one configured (checkpoint vs config: "
                              f"{diff}); use another --out or the checkpoint's settings")
    run_info, info = ckpt["data_info"], data.info()
    changed = [f"{k} {run_info.get(k)!r} -> {info[k]!r}" for k in ("shape", "n_train", "n_test", "n_classes",
                                                                   "binarize") if run_info.get(k) != info[k]]
    if changed:
        raise ValueError(f"data {data.name!r} is not the data of the run in {path} ({', '.join(changed)}); "
                         f"resume with the run's data")
    try:
        model.load_state_dict(ckpt["model"])
        saved = ckpt["optimizers"] if "optimizers" in ckpt else {"optimizer": ckpt["optimizer"]}
        if set(saved) != set(opts):
            raise ValueError(f"it holds the optimizers {sorted(saved)}, the model trains with {sorted(opts)}")
        for name, opt in opts.items():
            opt.load_state_dict(saved[name])
        rng, step = ckpt["rng"], ckpt["step"]
        torch.set_rng_state(rng["torch"])
        data_gen.set_state(rng["data"])
        noise = list(rng["noise"])
        if not is_kind(step, int) or step < 0:
            raise TypeError(f"its step must be an int >= 0; got {step!r}")
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot resume from it ({type(e).__name__}: {e})") from None
    for name, fresh in model.make_optimizers(cfg).items():
        for group, new in zip(opts[name].param_groups, fresh.param_groups):
            # the run's optimizer settings now (lr, Adam's betas and eps: "apply" on resume); the schedule's base
            group.update({k: v for k, v in new.items() if k != "params"}, initial_lr=new["lr"])
    if len(noise) == world and isinstance(noise[rank], torch.Tensor) and (
            noise[rank].shape == noise_gen.get_state().shape):
        noise_gen.set_state(noise[rank])
    else:
        log(f"note: {path} was written by {len(noise)} process(es) on {ckpt['config']['device']}, this run has "
             f"{world} on {noise_gen.device}: the posterior noise streams are re-seeded", rank)
    run = ckpt["config"]
    applied = [f"{k} {run[k]!r} -> {v!r}" for k, v in recorded(cfg).items()
               if SETTINGS[k].resume == "apply" and k != "data" and run[k] != v]
    log(f"resuming from {path} at epoch {ckpt['epoch']}" + (f" with {', '.join(applied)}" if applied else ""), rank)
    return ckpt["epoch"], step, list(ckpt["metrics"])
