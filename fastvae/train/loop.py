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
from typing import Optional

import torch
import torch.distributed as dist

from ..data import load_data
from ..models import VAE
from ..models.vae import VARIANCE_LR_SCALE  # noqa: F401 (fastvae.train exports it)
from .amp import cpu_has_native_bf16, resolve_amp  # noqa: F401 (fastvae.train.loop.cpu_has_native_bf16)
from .build import build_checked
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_run_checkpoint, save_checkpoint
from .config import model_kwargs, resolve_config, semi_supervised_labels
from .distributed import dist_env, from_rank0, gather_with_grad, log, pick_device, process_group, ranks_agree
from .evaluation import evaluate
from .resume import resume_run
from .rundir import CHECKPOINT_NAME, OutDirError, atomic_write, claim_out_dir, describe_os_error, release_out_dir
from .settings import recorded
from .stops import (TrainingDiverged, TrainingInterrupted, TrainingStopped, WriteFailed,  # noqa: F401
                    diverged, finite_everywhere, nonfinite)
from .summary import fastvae_version, finish, write_metrics


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


@dataclass
class TrainResult:
    model: VAE
    config: dict
    metrics: list
    out: str
    summary: dict = field(default_factory=dict)


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


@dataclass
class _Run:
    """What the phases of a run share: set up once (_setup), then advanced epoch by epoch."""
    cfg: dict
    data: object                  # fastvae.data.Data
    device: torch.device
    distributed: bool
    rank: int
    world: int
    model: VAE
    step_model: object            # the model, or it wrapped by DDP / torch.compile
    opts: dict                    # name -> optimizer
    noise_gen: torch.Generator    # the posterior noise (and dynamic binarization) of this rank
    data_gen: torch.Generator     # the order of the data (and M2's labelled batches), the same on every rank
    amp: Optional[str]            # the resolved autocast ("bf16" or None)
    autocast: object              # () -> its context
    metrics: list
    start_epoch: int
    global_step: int
    saved_epoch: int              # the epoch of the checkpoint on disk (0: none), and its file
    saved_path: str
    steps_per_epoch: int
    train_y: object               # the training labels (M2: with -1 where hidden), or None
    labelled: object              # M2: the indices of the labels kept, else None
    bar: object                   # the progress bar, or None

    @property
    def ckpt_path(self):
        return os.path.join(self.cfg["out"], CHECKPOINT_NAME)


def _run(cfg, data, device, distributed, rank, world):
    """Trains in the claimed folder: setup, then per epoch training, evaluation and a checkpoint, then the summary;
    a stop (Ctrl-C, a failed write) says where it happened and which checkpoint is kept."""
    run = _setup(cfg, data, device, distributed, rank, world)
    epoch = run.start_epoch
    when = None                                   # where a stop happens: in epoch N, or after the last one
    try:
        if rank == 0 and (run.metrics or run.cfg["epochs"] > run.start_epoch):  # (--epochs 0 of a new run: nothing)
            atomic_write(os.path.join(run.cfg["out"], "config.json"),
                         lambda f: json.dump(recorded(run.cfg), f, indent=2))
        for epoch in range(run.start_epoch, run.cfg["epochs"]):
            row = _train_epoch(run, epoch)
            rng_noise = _noise_states(run)        # (before the evaluation, as every checkpoint so far)
            test = _evaluate_epoch(run, epoch)
            _checkpoint(run, epoch, row, test, rng_noise)
            if distributed:
                dist.barrier()
        if run.bar is not None:
            run.bar.close()
            run.bar = None
        when = "after the last epoch"              # the final evaluation, pictures and summary
        agree = ranks_agree(run.model) if distributed else None
        summary = {}
        if rank == 0:
            summary = finish(run.cfg, run.model, run.data, run.metrics, run.cfg["out"], run.saved_path, world, agree,
                             amp=run.amp)
    except KeyboardInterrupt as e:      # Ctrl-C, or SIGTERM as fastvae.cli raises it (KeyboardInterrupt("terminated"))
        kept = (f"the last checkpoint is {run.saved_path} (epoch {run.saved_epoch}); continue with --resume"
                if run.saved_epoch else "no checkpoint was written")
        raise TrainingInterrupted(f"{e.args[0] if e.args else 'interrupted'} {when or f'in epoch {epoch + 1}'}; "
                                  f"{kept}") from None
    except OSError as e:                # a full disk, a read-only folder: the file and the reason, and what is kept
        kept = (f"the last good checkpoint, {run.saved_path} (epoch {run.saved_epoch}), is kept" if run.saved_epoch
                else "no checkpoint was written")
        raise WriteFailed(f"{describe_os_error(e)}; training stopped {when or f'in epoch {epoch + 1}'} and {kept}") \
            from None
    finally:
        if run.bar is not None:
            run.bar.close()
    if distributed:
        dist.barrier()
    return TrainResult(model=run.model, config=run.cfg, metrics=run.metrics, out=run.cfg["out"], summary=summary)


def _setup(cfg, data, device, distributed, rank, world):
    """The run's data, model, optimizers and generators, seeded (or restored from its checkpoint on resume), the
    model wrapped for the step (DDP, compile), the autocast, the labels and the progress bar."""
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
        start_epoch, global_step, metrics = resume_run(found, cfg, model, opts, data, data_gen, noise_gen, rank,
                                                       world)
    elif cfg["resume"]:
        log(f"note: --resume given but {ckpt_path} does not exist; starting from scratch", rank)

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
        log(f"--amp auto: {amp or 'none'} on {device} (native bf16 matmuls: {'yes' if amp else 'no'})", rank)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp == "bf16" else nullcontext

    if not isinstance(cfg["data"], str):           # a Dataset object: recorded by name (checkpoints hold no code)
        cfg = {**cfg, "data": f"<{type(cfg['data']).__name__}>"}
    steps_per_epoch = math.ceil(data.train_x.shape[0] // world / cfg["batch_size"])
    train_y, labelled = data.train_y, None
    if model.semi_supervised:
        # M2: the labels kept (seeded, the same on every rank); each step adds a batch of them to the data's batch
        train_y, labelled = semi_supervised_labels(cfg, data)
        labelled = labelled.to(data.train_x.device)
    bar = _progress(cfg, rank, total=global_step + (cfg["epochs"] - start_epoch) * steps_per_epoch,
                    initial=global_step)
    return _Run(cfg=cfg, data=data, device=device, distributed=distributed, rank=rank, world=world, model=model,
                step_model=step_model, opts=opts, noise_gen=noise_gen, data_gen=data_gen, amp=amp, autocast=autocast,
                metrics=metrics, start_epoch=start_epoch, global_step=global_step, saved_epoch=start_epoch,
                saved_path=found[0] if found is not None else ckpt_path, steps_per_epoch=steps_per_epoch,
                train_y=train_y, labelled=labelled, bar=bar)


def _train_epoch(run, epoch):
    """One epoch of training steps over this rank's share of the data; returns the epoch's row of train metrics."""
    cfg, data, model, device, world = run.cfg, run.data, run.model, run.device, run.world
    model.train()
    for opt in run.opts.values():
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor(cfg["lr_schedule"], epoch)
    n_train = data.train_x.shape[0]
    per_rank = n_train // world
    perm = torch.randperm(n_train, generator=run.data_gen)[:per_rank * world][run.rank::world].to(data.train_x.device)
    sums = torch.zeros(5, device=device, dtype=torch.float64)   # loss, recon, kl, elbo, distance
    terms = {}
    t0 = time.perf_counter()
    seen = 0
    for s in range(run.steps_per_epoch):
        xb, yb, b = _batch(run, perm[s * cfg["batch_size"]:(s + 1) * cfg["batch_size"]])
        dgen = None
        if model.divergence != "kl":
            # the same projections / prior samples on every rank (seeded by the global step only)
            dgen = torch.Generator(device).manual_seed(cfg["seed"] * 1_000_003 + run.global_step)
        out = model.train_step(run.step_model, xb, yb, run.opts, generator=run.noise_gen, distance_generator=dgen,
                               autocast=run.autocast)
        if out.terms:           # a model's own terms (VAE-GAN's), recorded as train_<name>
            for k, v in out.terms.items():
                terms[k] = terms.get(k, 0.0) + v.detach().double() * b
        with torch.no_grad():   # the metrics of the data's batch (not M2's added labelled batch)
            sums += torch.stack([out.loss.detach().double() * b, out.recon[:b].detach().double().sum(),
                                 out.kl[:b].detach().double().sum(), out.elbo[:b].detach().double().sum(),
                                 (out.distance.detach().double() if out.distance is not None
                                  else out.loss.new_zeros((), dtype=torch.float64)) * b])
        seen += b
        run.global_step += 1
        if run.bar is not None:
            run.bar.update(1)
            if s % 10 == 0 or s == run.steps_per_epoch - 1:
                post = dict(epoch=epoch + 1, loss=f"{out.loss.item():.3g}", recon=f"{out.recon.mean().item():.3g}")
                post[model.regulariser.metric] = f"{out.regulariser.mean().item():.3g}"
                post["samples/s"] = f"{seen * world / (time.perf_counter() - t0):.0f}"
                run.bar.set_postfix(post, refresh=False)
        if s % 50 == 49 or s == run.steps_per_epoch - 1:
            if not finite_everywhere(sums, run.distributed):
                raise diverged("the loss", epoch, run.global_step, run.saved_path, run.saved_epoch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - t0
    if run.distributed:
        dist.all_reduce(sums)
    n_seen = per_rank * world
    row = dict(epoch=epoch + 1, step=run.global_step, train_loss=sums[0].item() / n_seen,
               train_recon=sums[1].item() / n_seen, train_kl=sums[2].item() / n_seen,
               train_elbo=sums[3].item() / n_seen)
    if model.divergence != "kl":
        row[f"train_{model.regulariser.metric}"] = sums[4].item() / n_seen     # train_mmd, train_sw
    row.update({f"train_{k}": v.item() / n_seen for k, v in terms.items()})
    row["samples_per_s"] = n_seen / train_time
    row["epoch_time_s"] = train_time
    return row


def _batch(run, idx):
    """The training batch of the indices idx on the device: (x, y or None, the number of the data's samples in it);
    M2 adds a batch of the labelled samples, dynamic binarization draws the pixels."""
    data, device = run.data, run.device
    xb = data.train_x[idx].to(device, non_blocking=True)
    yb = run.train_y[idx].to(device, non_blocking=True) if run.model.n_classes > 0 else None
    b = xb.shape[0]
    if run.labelled is not None:
        pick = run.labelled[torch.randperm(run.labelled.numel(), generator=run.data_gen)[:run.cfg["batch_size"]]
                            .to(run.labelled.device)]
        xb = torch.cat([xb, data.train_x[pick].to(device, non_blocking=True)])
        yb = torch.cat([yb, data.train_y[pick].to(device, non_blocking=True)])
    if data.binarize == "dynamic":
        xb = torch.bernoulli(xb.clamp(0, 1), generator=run.noise_gen)
    return xb, yb, b


def _noise_states(run):
    """The posterior noise generators' states, one per rank, for the checkpoint."""
    if not run.distributed:
        return [run.noise_gen.get_state()]
    states = [None] * run.world
    dist.all_gather_object(states, run.noise_gen.get_state())
    return states


def _evaluate_epoch(run, epoch):
    """The test metrics after an epoch (rank 0's; None on the others); a NaN or inf in them or in a parameter stops
    the run on every rank, so that only a finite state is ever saved."""
    test, bad = None, None
    if run.rank == 0:
        test = evaluate(run.model, run.data.test_x, run.data.test_y, seed=run.cfg["seed"])
        bad = nonfinite(run.model, test)
    bad = from_rank0(bad, run.distributed)
    if bad:
        raise diverged(bad, epoch, run.global_step, run.saved_path, run.saved_epoch)
    return test


def _checkpoint(run, epoch, row, test, rng_noise):
    """The epoch's metrics row recorded; on rank 0 the checkpoint (atomic, the previous one kept) and the metrics
    files written, and the epoch logged when there is no progress bar."""
    cfg, metrics = run.cfg, run.metrics
    if run.rank != 0:
        metrics.append(row)
        return
    row.update({f"test_{k}": v for k, v in test.items()})
    metrics.append(row)
    save_checkpoint(run.ckpt_path, dict(
        format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, fastvae_version=fastvae_version(),
        model_config=run.model.config, model=run.model.state_dict(), **_optimizer_states(run.opts),
        epoch=epoch + 1, step=run.global_step, config=recorded(cfg), data_info=run.data.info(),
        metrics=metrics, rng=dict(torch=torch.get_rng_state(), data=run.data_gen.get_state(),
                                  noise=[t.cpu() for t in rng_noise])))
    run.saved_epoch, run.saved_path = epoch + 1, run.ckpt_path
    write_metrics(cfg["out"], metrics)
    if run.bar is None:
        every = max(1, cfg["epochs"] // 10)
        if (epoch + 1) % every == 0 or epoch + 1 == cfg["epochs"]:
            log(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {row['train_loss']:.3f}, "
                f"test ELBO {row['test_elbo']:.3f}, {row['samples_per_s']:.0f} samples/s")


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
