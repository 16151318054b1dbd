"""The training loop: the whole data set on the device, an atomic checkpoint after every good epoch (the one before
kept beside it; resume continues exactly: model, optimizer, epoch and every RNG stream), a NaN/inf stop and a
failed write (a full disk, a read-only folder) that keep the last good checkpoint, Ctrl-C or SIGTERM that say
where it is, and DistributedDataParallel when launched by torchrun."""
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..data import load_data
from ..models import VAE
from ..models.vae import VARIANCE_LR_SCALE  # noqa: F401 (fastvae.train exports it)
from .build import build_checked
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointError, load_run_checkpoint, save_checkpoint
from .config import model_kwargs, resolve_config, semi_supervised_labels
from .distributed import dist_env, from_rank0, gather_with_grad, pick_device, process_group, ranks_agree
from .evaluation import evaluate
from .rundir import CHECKPOINT_NAME, OutDirError, atomic_write, claim_out_dir, describe_os_error, release_out_dir
from .settings import SETTINGS, is_kind, recorded
from .summary import fastvae_version, finish, write_metrics


class TrainingStopped(RuntimeError):
    """Training could not go on; the message (one line) says why and where the last good checkpoint is."""


class TrainingDiverged(TrainingStopped):
    """The loss, the test metrics or the parameters became NaN or inf; the last good checkpoint is kept."""


class WriteFailed(TrainingStopped):
    """A file of the run could not be written (a full disk, a read-only folder); the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, which fastvae.cli raises as KeyboardInterrupt("terminated by SIGTERM")) during training;
    the message says where the last checkpoint is."""


# The IWAE paper's schedule (Burda et al. 2015, section 5): stage i = 0..7 runs 3^i epochs at lr * 10^(-i/7),
# 3280 epochs in all. A run of E epochs follows its first E epochs (and stays in the last stage beyond 3280).
IWAE_STAGES = 8


def lr_factor(schedule, epoch):
    """The factor of the base learning rates in the epoch (counted from 0) of a run."""
    if schedule == "constant":
        return 1.0
    stage = 0
    while stage < IWAE_STAGES - 1 and epoch >= (3 ** (stage + 1) - 1) // 2:    # stage i starts at (3^i - 1) / 2
        stage += 1
    return 10.0 ** (-stage / 7)


def resolve_amp(amp, device, cpu_bf16=None, cuda_bf16=None):
    """The autocast a run uses for its amp setting: "bf16" or None (float32); "auto" is bf16 where the device has
    native bf16 matmuls (a CPU with AMX-BF16 or AVX512-BF16: cpu_bf16(); a GPU for which
    torch.cuda.is_bf16_supported(including_emulation=False)), else None."""
    if amp != "auto":
        return "bf16" if amp == "bf16" else None
    if device.type == "cuda":
        native = (cuda_bf16 or (lambda: torch.cuda.is_bf16_supported(including_emulation=False)))()
    elif device.type == "cpu":
        native = (cpu_bf16 or cpu_has_native_bf16)()
    else:
        native = False
    return "bf16" if native else None


def cpu_has_native_bf16(capability=None, cpuinfo="/proc/cpuinfo"):
    """Whether this CPU multiplies bf16 matrices natively: torch's CPU capability (capability: as
    torch.backends.cpu.get_cpu_capability() says) is AVX512 or AMX, and the CPU has AMX-BF16 or AVX512-BF16 (the
    flags of cpuinfo). Elsewhere torch converts bf16 to float32 for a matmul, which is slower than float32."""
    cap = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    if not cap.startswith(("AVX512", "AMX")):
        return False
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


@dataclass
class TrainResult:
    model: VAE
    config: dict
    metrics: list
    out: str
    summary: dict = field(default_factory=dict)


def _log(msg, rank=0):
    if rank == 0:
        print(msg, flush=True)


def train(config=None, *, data=None):
    """Trains a model as `config` (see DEFAULTS; resolve_config fills it) describes; returns a TrainResult.
    data: an already loaded fastvae.data.Data (else config["data"] is loaded).
    Under torchrun, train() sets up the process group and destroys it before returning; a group the caller set up
    is used and left open (`import torch.distributed.nn` before creating it: see distributed.process_group)."""
    cfg = resolve_config(config)
    distributed, rank, world, local_rank = dist_env()
    threads_before = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    device = pick_device(cfg["device"], local_rank)
    try:
        with process_group(distributed, device):
            return _train(cfg, data, device, distributed, rank, world)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg, data, device, distributed, rank, world):
    """Claims the run folder (rank 0 alone writes; every rank learns whether it may), then trains."""
    lock, refused = None, None
    if rank == 0:
        try:
            lock = claim_out_dir(cfg["out"], resume=cfg["resume"], overwrite=cfg["overwrite"])
        except OutDirError as e:
            refused = str(e)
    refused = from_rank0(refused, distributed)
    if refused:
        raise OutDirError(refused)
    try:
        return _run(cfg, data, device, distributed, rank, world)
    finally:
        if lock is not None:
            release_out_dir(lock)


def _run_data(cfg, data, device, world):
    if data is None:
        data = load_data(cfg["data"], binarize=cfg["binarize"], device=device)
    elif cfg["binarize"] and data.binarize != cfg["binarize"]:
        raise ValueError(f"the data given is binarized {data.binarize!r}, the config asks {cfg['binarize']!r}")
    if cfg["model"] in ("cvae", "m2") and not data.n_classes:
        raise ValueError(f"model {cfg['model']} needs labelled data; {data.name} has no labels")
    n_train, n_test = data.train_x.shape[0], data.test_x.shape[0]
    if n_train < world or n_test < 1:
        raise ValueError(f"data {data.name} has {n_train} training and {n_test} test samples; training needs at "
                         f"least {world} (one per process) and 1")
    return data


def _resume(found, cfg, model, opts, data, data_gen, noise_gen, rank, world):
    """Restores a run from its checkpoint (load_run_checkpoint's (path, checkpoint, note)) into model, its
    optimizers opts (name -> optimizer) and the generators; applies the settings that may change (Setting.resume
    "apply"; the others were refused by resolve_config). Returns (epoch, step, metrics)."""
    path, ckpt, note = found
    if note:
        _log(f"note: {note}", rank)
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
        _log(f"note: {path} was written by {len(noise)} process(es) on {ckpt['config']['device']}, this run has "
             f"{world} on {noise_gen.device}: the posterior noise streams are re-seeded", rank)
    run = ckpt["config"]
    applied = [f"{k} {run[k]!r} -> {v!r}" for k, v in recorded(cfg).items()
               if SETTINGS[k].resume == "apply" and k != "data" and run[k] != v]
    _log(f"resuming from {path} at epoch {ckpt['epoch']}" + (f" with {', '.join(applied)}" if applied else ""), rank)
    return ckpt["epoch"], step, list(ckpt["metrics"])


def _run(cfg, data, device, distributed, rank, world):
    out_dir = cfg["out"]
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)
    torch.manual_seed(cfg["seed"])
    data = _run_data(cfg, data, device, world)
    model = build_checked(model_kwargs(cfg, data), device, batch_size=cfg["batch_size"])
    opts = model.make_optimizers(cfg)
    for opt in opts.values():
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]        # the base of the lr schedule
    noise_gen = torch.Generator(device).manual_seed(cfg["seed"] * 1_000_003 + 7919 * rank + 1)
    data_gen = torch.Generator().manual_seed(cfg["seed"] + 17)
    start_epoch, global_step, metrics = 0, 0, []
    found = load_run_checkpoint(out_dir) if cfg["resume"] else None
    if found is not None:
        start_epoch, global_step, metrics = _resume(found, cfg, model, opts, data, data_gen, noise_gen, rank, world)
    elif cfg["resume"]:
        _log(f"note: --resume given but {ckpt_path} does not exist; starting from scratch", rank)
    saved_epoch = start_epoch        # the epoch of the checkpoint on disk (0: none), and its file
    saved_path = found[0] if found is not None else ckpt_path

    step_model = model
    if model.own_step and (distributed or cfg["compile"]):
        raise ValueError(f"--model {cfg['model']} trains by its own step in one process: it takes neither torchrun "
                         f"(DDP) nor compile")
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model.gather = gather_with_grad
        step_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["compile"]:
        step_model = torch.compile(step_model)
    amp = resolve_amp(cfg["amp"], device)
    if cfg["amp"] == "auto":
        _log(f"--amp auto: {amp or 'none'} on {device} (native bf16 matmuls: {'yes' if amp else 'no'})", rank)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp == "bf16" else nullcontext

    if not isinstance(cfg["data"], str):           # a Dataset object: recorded by name (checkpoints hold no code)
        cfg = {**cfg, "data": f"<{type(cfg['data']).__name__}>"}
    n_train = data.train_x.shape[0]
    per_rank = n_train // world
    bs = cfg["batch_size"]
    steps_per_epoch = math.ceil(per_rank / bs)
    use_labels = model.n_classes > 0
    train_y, labelled = data.train_y, None
    if model.semi_supervised:
        # M2: the labels kept (seeded, the same on every rank); each step adds a batch of them to the data's batch
        train_y, labelled = semi_supervised_labels(cfg, data)
        labelled = labelled.to(data.train_x.device)
    bar = _progress(cfg, rank, total=global_step + (cfg["epochs"] - start_epoch) * steps_per_epoch,
                    initial=global_step)
    reg_name = model.regulariser.metric          # train_kl, train_mmd, train_sw
    epoch = start_epoch
    when = None                                   # where a stop happens: in epoch N, or after the last one
    try:
        if rank == 0 and (metrics or cfg["epochs"] > start_epoch):      # (--epochs 0 of a new run writes nothing)
            atomic_write(os.path.join(out_dir, "config.json"), lambda f: json.dump(recorded(cfg), f, indent=2))
        for epoch in range(start_epoch, cfg["epochs"]):
            model.train()
            for opt in opts.values():
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * lr_factor(cfg["lr_schedule"], epoch)
            perm = torch.randperm(n_train, generator=data_gen)[:per_rank * world][rank::world].to(data.train_x.device)
            sums = torch.zeros(5, device=device, dtype=torch.float64)   # loss, recon, kl, elbo, distance
            terms = {}
            t0 = time.perf_counter()
            seen = 0
            for s in range(steps_per_epoch):
                idx = perm[s * bs:(s + 1) * bs]
                xb = data.train_x[idx].to(device, non_blocking=True)
                yb = train_y[idx].to(device, non_blocking=True) if use_labels else None
                b = xb.shape[0]
                if labelled is not None:
                    pick = labelled[torch.randperm(labelled.numel(), generator=data_gen)[:bs].to(labelled.device)]
                    xb = torch.cat([xb, data.train_x[pick].to(device, non_blocking=True)])
                    yb = torch.cat([yb, data.train_y[pick].to(device, non_blocking=True)])
                if data.binarize == "dynamic":
                    xb = torch.bernoulli(xb.clamp(0, 1), generator=noise_gen)
                dgen = None
                if model.divergence != "kl":
                    # the same projections / prior samples on every rank (seeded by the global step only)
                    dgen = torch.Generator(device).manual_seed(cfg["seed"] * 1_000_003 + global_step)
                out = model.train_step(step_model, xb, yb, opts, generator=noise_gen, distance_generator=dgen,
                                       autocast=autocast)
                if out.terms:           # a model's own terms (VAE-GAN's), recorded as train_<name>
                    for k, v in out.terms.items():
                        terms[k] = terms.get(k, 0.0) + v.detach().double() * b
                with torch.no_grad():   # the metrics of the data's batch (not M2's added labelled batch)
                    sums += torch.stack([out.loss.detach().double() * b, out.recon[:b].detach().double().sum(),
                                         out.kl[:b].detach().double().sum(), out.elbo[:b].detach().double().sum(),
                                         (out.distance.detach().double() if out.distance is not None
                                          else out.loss.new_zeros((), dtype=torch.float64)) * b])
                seen += b
                global_step += 1
                if bar is not None:
                    bar.update(1)
                    if s % 10 == 0 or s == steps_per_epoch - 1:
                        loss = out.loss.item()
                        post = dict(epoch=epoch + 1, loss=f"{loss:.3g}", recon=f"{out.recon.mean().item():.3g}")
                        post[reg_name] = f"{out.regulariser.mean().item():.3g}"
                        post["samples/s"] = f"{seen * world / (time.perf_counter() - t0):.0f}"
                        bar.set_postfix(post, refresh=False)
                if s % 50 == 49 or s == steps_per_epoch - 1:
                    if not _finite_everywhere(sums, distributed):
                        raise _diverged("the loss", epoch, global_step, saved_path, saved_epoch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time = time.perf_counter() - t0
            if distributed:
                dist.all_reduce(sums)
            n_seen = per_rank * world
            row = dict(epoch=epoch + 1, step=global_step, train_loss=sums[0].item() / n_seen,
                       train_recon=sums[1].item() / n_seen, train_kl=sums[2].item() / n_seen,
                       train_elbo=sums[3].item() / n_seen)
            if model.divergence != "kl":
                row[f"train_{reg_name}"] = sums[4].item() / n_seen
            row.update({f"train_{k}": v.item() / n_seen for k, v in terms.items()})
            row["samples_per_s"] = n_seen / train_time
            row["epoch_time_s"] = train_time
            rng_noise = [noise_gen.get_state()]
            if distributed:
                rng_noise = [None] * world
                dist.all_gather_object(rng_noise, noise_gen.get_state())
            test, bad = None, None
            if rank == 0:
                test = evaluate(model, data.test_x, data.test_y, seed=cfg["seed"])
                bad = _nonfinite(model, test)
            bad = from_rank0(bad, distributed)      # only a finite state is ever saved
            if bad:
                raise _diverged(bad, epoch, global_step, saved_path, saved_epoch)
            if rank == 0:
                row.update({f"test_{k}": v for k, v in test.items()})
                metrics.append(row)
                save_checkpoint(ckpt_path, dict(
                    format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, fastvae_version=fastvae_version(),
                    model_config=model.config, model=model.state_dict(), **_optimizer_states(opts),
                    epoch=epoch + 1, step=global_step, config=recorded(cfg), data_info=data.info(),
                    metrics=metrics, rng=dict(torch=torch.get_rng_state(), data=data_gen.get_state(),
                                              noise=[t.cpu() for t in rng_noise])))
                saved_epoch, saved_path = epoch + 1, ckpt_path
                write_metrics(out_dir, metrics)
                if bar is None:
                    every = max(1, cfg["epochs"] // 10)
                    if (epoch + 1) % every == 0 or epoch + 1 == cfg["epochs"]:
                        _log(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {row['train_loss']:.3f}, "
                             f"test ELBO {row['test_elbo']:.3f}, {row['samples_per_s']:.0f} samples/s")
            else:
                metrics.append(row)
            if distributed:
                dist.barrier()
        if bar is not None:
            bar.close()
            bar = None
        when = "after the last epoch"              # the final evaluation, pictures and summary
        agree = ranks_agree(model) if distributed else None
        summary = {}
        if rank == 0:
            summary = finish(cfg, model, data, metrics, out_dir, saved_path, world, agree, amp=amp)
    except KeyboardInterrupt as e:      # Ctrl-C, or SIGTERM as fastvae.cli raises it (KeyboardInterrupt("terminated"))
        kept = (f"the last checkpoint is {saved_path} (epoch {saved_epoch}); continue with --resume"
                if saved_epoch else "no checkpoint was written")
        raise TrainingInterrupted(f"{e.args[0] if e.args else 'interrupted'} {when or f'in epoch {epoch + 1}'}; "
                                  f"{kept}") from None
    except OSError as e:                # a full disk, a read-only folder: the file and the reason, and what is kept
        kept = (f"the last good checkpoint, {saved_path} (epoch {saved_epoch}), is kept" if saved_epoch
                else "no checkpoint was written")
        raise WriteFailed(f"{describe_os_error(e)}; training stopped {when or f'in epoch {epoch + 1}'} and {kept}") \
            from None
    finally:
        if bar is not None:
            bar.close()
    if distributed:
        dist.barrier()
    return TrainResult(model=model, config=cfg, metrics=metrics, out=out_dir, summary=summary)


def _optimizer_states(opts):
    """The checkpoint entries of the optimizers: `optimizer` for the one of most models (as every checkpoint so
    far), `optimizers` (name -> state) for a model with several (VAE-GAN)."""
    if list(opts) == ["optimizer"]:
        return dict(optimizer=opts["optimizer"].state_dict())
    return dict(optimizers={name: opt.state_dict() for name, opt in opts.items()})


def _progress(cfg, rank, total, initial):
    if rank != 0 or not cfg["progress"]:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=0.5,
                file=sys.stderr)


def _finite_everywhere(sums, distributed):
    ok = torch.isfinite(sums[:4]).all().to(torch.int32)
    if distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _nonfinite(model, test):
    """None when the test metrics and every parameter are finite, else what is not."""
    bad = [f"the test {k} ({v})" for k, v in test.items() if not math.isfinite(v)]
    bad += [f"parameter {n}" for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    return ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "") if bad else None


def _diverged(what, epoch, step, ckpt_path, saved_epoch):
    kept = (f"the last good checkpoint, {ckpt_path} (epoch {saved_epoch}), is kept" if saved_epoch
            else "no checkpoint was written")
    return TrainingDiverged(f"{what} became NaN or inf in epoch {epoch + 1} (by step {step}); training stopped and "
                            f"{kept}. Try a lower --lr, --variance fixed, or --amp none.")
