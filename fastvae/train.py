"""The training loop behind `fastvae train`: whole data set on the device, an atomic checkpoint every epoch
(resume continues exactly: model, optimizer, epoch and every RNG stream), metrics as CSV and JSON, PNGs, a NaN/inf
stop that keeps the last good checkpoint, and DistributedDataParallel when launched by torchrun.
"""
import csv
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .data import load_data
from .models import VAE, build_model

CHECKPOINT_FORMAT = "fastvae-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
MODELS = ("vae", "beta-vae", "cvae", "iwae", "wae-mmd", "swae")

# Every key of a run's configuration (the `fastvae train` flags, the TOML keys) and its default. None means
# "the model preset's value" (PRESETS), or the VAE's own default.
DEFAULTS = dict(
    model="vae", data="digits", latent_dim=16, hidden_dims=[512, 256], batch_size=128, epochs=100, lr=1e-3,
    device="auto", amp=None, compile=False, out="out/digits", resume=False, seed=0,
    likelihood="gaussian", variance="learned", beta=None, n_samples=None, posterior="diagonal", divergence=None,
    reg_weight=None, kernel="imq", bandwidth=None, n_projections=128, binarize=None, conv=False,
    backend="fastvae", eval_k=1000, progress=True, threads=None,
)
PRESETS = {
    "vae": dict(beta=1.0, n_samples=1, divergence="kl"),
    "beta-vae": dict(beta=4.0, n_samples=1, divergence="kl"),
    "cvae": dict(beta=1.0, n_samples=1, divergence="kl"),
    "iwae": dict(beta=1.0, n_samples=5, divergence="kl"),
    "wae-mmd": dict(beta=0.0, n_samples=1, divergence="mmd", reg_weight=100.0),
    "swae": dict(beta=0.0, n_samples=1, divergence="sliced", reg_weight=10.0),
}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class CheckpointError(ValueError):
    """A file is not a fastvae checkpoint, is from a newer format, or belongs to another model."""


def resolve_config(overrides=None):
    """DEFAULTS <- the model's preset <- overrides (a TOML table, the flags given); unknown keys are errors."""
    overrides = {k.replace("-", "_"): v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown configuration key(s) {unknown}; known: {sorted(DEFAULTS)}")
    cfg = dict(DEFAULTS)
    model = overrides.get("model", cfg["model"])
    if model not in PRESETS:
        raise ValueError(f"model must be one of {MODELS}; got {model!r}")
    cfg.update(PRESETS[model])
    cfg.update(overrides)
    if isinstance(cfg["hidden_dims"], str):
        cfg["hidden_dims"] = [int(h) for h in cfg["hidden_dims"].split(",") if h.strip()]
    cfg["hidden_dims"] = [int(h) for h in cfg["hidden_dims"]]
    if cfg["reg_weight"] is None:
        cfg["reg_weight"] = 10.0
    if cfg["binarize"] is None and cfg["likelihood"] == "bernoulli":
        cfg["binarize"] = "dynamic"
    if cfg["amp"] in ("none", "fp32", False):
        cfg["amp"] = None
    if cfg["amp"] not in (None, "bf16"):
        raise ValueError(f"amp must be bf16 or none; got {cfg['amp']!r}")
    for key in ("epochs", "batch_size", "latent_dim", "eval_k", "n_samples", "n_projections", "seed"):
        cfg[key] = int(cfg[key])
    if cfg["epochs"] < 0 or cfg["batch_size"] < 1 or cfg["eval_k"] < 0:
        raise ValueError(f"epochs must be >= 0, batch_size >= 1 and eval_k >= 0; got {cfg['epochs']}, "
                         f"{cfg['batch_size']}, {cfg['eval_k']}")
    return cfg


def model_kwargs(cfg, data):
    """The VAE arguments of a run configuration on its data."""
    return dict(
        input_dim=data.shape if cfg["conv"] else (data.shape[0] if len(data.shape) == 1 else list(data.shape)),
        latent_dim=cfg["latent_dim"], hidden_dims=cfg["hidden_dims"], likelihood=cfg["likelihood"],
        variance=cfg["variance"], beta=cfg["beta"], divergence=cfg["divergence"], n_samples=cfg["n_samples"],
        posterior=cfg["posterior"], n_classes=data.n_classes if cfg["model"] == "cvae" else 0,
        reg_weight=cfg["reg_weight"], kernel=cfg["kernel"], bandwidth=cfg["bandwidth"],
        n_projections=cfg["n_projections"], conv=cfg["conv"], backend=cfg["backend"])


# Adam moves a parameter by about lr per step: the one learned log-variance of the Gaussian likelihood has to
# travel from 0 to about -5 on [0, 1] pixel data, which at lr 1e-3 takes thousands of steps and holds the whole
# model back (a straight-line loss curve). Its own, larger step size lets it follow the reconstruction error.
VARIANCE_LR_SCALE = 20.0


def _param_groups(model, lr):
    if getattr(model, "variance", None) != "learned":
        return [{"params": list(model.parameters())}]
    rest = [p for n, p in model.named_parameters() if n != "log_variance"]
    return [{"params": rest}, {"params": [model.log_variance], "lr": lr * VARIANCE_LR_SCALE}]


def pick_device(name="auto", local_rank=0):
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


# -------------------------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path, state):
    """Writes state to path atomically: a temporary file in the same folder, fsync, rename."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """Reads a fastvae checkpoint without running code from it (weights_only=True) and checks its format."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a loadable fastvae checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a fastvae checkpoint (no format={CHECKPOINT_FORMAT!r} entry; "
                              f"a checkpoint of another model or program?)")
    version = ckpt.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}, newer than this fastvae reads "
                              f"(up to {CHECKPOINT_VERSION}); upgrade fastvae")
    for key in ("model_config", "model", "config"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks the {key!r} entry of a fastvae checkpoint")
    return ckpt


def model_from_checkpoint(path, device="cpu"):
    """(model in eval mode, checkpoint dict)."""
    ckpt = load_checkpoint(path, map_location=device)
    model = build_model(ckpt["model_config"]).to(device)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the model it describes ({e})") from e
    return model.eval(), ckpt


# -------------------------------------------------------------------------------------------------------------------
# distributed


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums each copy's gradient over ranks (all_reduce, which gloo has
    unlike reduce_scatter) and returns this rank's slice. Every rank computes the same distance of the gathered
    batch; with DDP's averaging the parameters then get the gradient of the global-batch distance."""

    @staticmethod
    def forward(ctx, x):
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x):
    return _GatherWithGrad.apply(x)


def _dist_env():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1, int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


# -------------------------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model, x, y=None, *, n_samples=0, batch_size=4096, seed=0):
    """Test metrics: mean ELBO, loss, reconstruction and KL (and the importance-sampled log-likelihood with
    n_samples > 0), per sample, with a fixed noise seed so that evaluations are comparable."""
    was_training, gather = model.training, model.gather
    model.eval()
    model.gather = None      # rank 0 evaluates alone: no collective calls
    device = x.device
    g = torch.Generator(device).manual_seed(seed)
    sums = dict(elbo=0.0, loss=0.0, recon=0.0, kl=0.0)
    ll = 0.0
    n = x.shape[0]
    for i in range(0, n, batch_size):
        xb = x[i:i + batch_size]
        yb = None if y is None or not model.n_classes else y[i:i + batch_size]
        out = model(xb, yb, generator=g, distance_generator=torch.Generator(device).manual_seed(seed + i))
        b = xb.shape[0]
        sums["elbo"] += out.elbo.sum().item()
        sums["loss"] += out.loss.item() * b
        sums["recon"] += out.recon.sum().item()
        sums["kl"] += out.kl.sum().item()
        if n_samples:
            ll += model.log_likelihood(xb, yb, n_samples=n_samples, generator=g).sum().item()
    model.train(was_training)
    model.gather = gather
    res = {k: v / n for k, v in sums.items()}
    if n_samples:
        res["log_likelihood"] = ll / n
    return res


# -------------------------------------------------------------------------------------------------------------------
# the loop


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
    is used and left open (`import torch.distributed.nn` before creating it, for the reason given below)."""
    cfg = resolve_config(config)
    distributed, rank, world, local_rank = _dist_env()
    threads_before = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    device = pick_device(cfg["device"], local_rank)
    created = distributed and not dist.is_initialized()
    if created:
        # torch.distributed.nn binds `group=group.WORLD` as default arguments when it is first imported, and DDP
        # imports it (through torch._dynamo): imported after the group exists, it would pin the group for the
        # life of the process, so that destroy_process_group could not join the group's gloo worker threads.
        # One of those threads then frees a finished collective (holding Python objects) during interpreter
        # shutdown and the process aborts ("terminate called without an active exception") after a good run.
        import torch.distributed.nn as _  # noqa: F401  (binds no local `torch`)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(cfg, data, device, distributed, rank, world)
    finally:
        if created and dist.is_initialized():     # a group the caller set up stays theirs
            dist.destroy_process_group()
        torch.set_num_threads(threads_before)


def _train(cfg, data, device, distributed, rank, world):
    out_dir = cfg["out"]
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)

    torch.manual_seed(cfg["seed"])
    if data is None:
        data = load_data(cfg["data"], binarize=cfg["binarize"], device=device)
    elif cfg["binarize"] and data.binarize != cfg["binarize"]:
        raise ValueError(f"the data given is binarized {data.binarize!r}, the config asks {cfg['binarize']!r}")
    if cfg["model"] == "cvae" and not data.n_classes:
        raise ValueError(f"model cvae needs labelled data; {data.name} has no labels")
    model = VAE(**model_kwargs(cfg, data)).to(device)
    opt = torch.optim.Adam(_param_groups(model, cfg["lr"]), lr=cfg["lr"])
    noise_gen = torch.Generator(device).manual_seed(cfg["seed"] * 1_000_003 + 7919 * rank + 1)
    data_gen = torch.Generator().manual_seed(cfg["seed"] + 17)
    start_epoch, metrics = 0, []

    if cfg["resume"] and os.path.isfile(ckpt_path):
        ckpt = load_checkpoint(ckpt_path)
        # the op backend may change between runs (same model, same parameters); nothing else may
        diff = {k: (ckpt["model_config"].get(k), v) for k, v in model.config.items()
                if k != "backend" and ckpt["model_config"].get(k) != v}
        if diff:
            raise CheckpointError(f"{ckpt_path} holds another model than the one configured (checkpoint vs config: "
                                  f"{diff}); use another --out or the checkpoint's settings")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, metrics = int(ckpt["epoch"]), list(ckpt["metrics"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        data_gen.set_state(rng["data"])
        noise_states = rng["noise"]
        if len(noise_states) == world:
            noise_gen.set_state(noise_states[rank])
        else:
            _log(f"note: {ckpt_path} was written by {len(noise_states)} process(es), this run has {world}: "
                 f"the posterior noise streams are re-seeded", rank)
        _log(f"resuming from {ckpt_path} at epoch {start_epoch}", rank)
    elif cfg["resume"]:
        _log(f"note: --resume given but {ckpt_path} does not exist; starting from scratch", rank)

    step_model = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model.gather = gather_with_grad
        step_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["compile"]:
        step_model = torch.compile(step_model)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg["amp"] == "bf16" else nullcontext

    if not isinstance(cfg["data"], str):           # a Dataset object: recorded by name (checkpoints hold no code)
        cfg = {**cfg, "data": f"<{type(cfg['data']).__name__}>"}
    if rank == 0:
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)

    n_train = data.train_x.shape[0]
    per_rank = n_train // world
    bs = cfg["batch_size"]
    steps_per_epoch = math.ceil(per_rank / bs)
    use_labels = model.n_classes > 0
    global_step = start_epoch * steps_per_epoch
    bar = _progress(cfg, rank, total=cfg["epochs"] * steps_per_epoch, initial=global_step)
    reg_name = {"kl": "kl", "mmd": "mmd", "sliced": "sw"}[model.divergence]
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            model.train()
            perm = torch.randperm(n_train, generator=data_gen)[:per_rank * world][rank::world].to(data.train_x.device)
            sums = torch.zeros(5, device=device, dtype=torch.float64)   # loss, recon, kl, elbo, distance
            t0 = time.perf_counter()
            seen = 0
            for s in range(steps_per_epoch):
                idx = perm[s * bs:(s + 1) * bs]
                xb = data.train_x[idx].to(device, non_blocking=True)
                yb = data.train_y[idx].to(device, non_blocking=True) if use_labels else None
                if data.binarize == "dynamic":
                    xb = torch.bernoulli(xb.clamp(0, 1), generator=noise_gen)
                dgen = None
                if model.divergence != "kl":
                    # the same projections / prior samples on every rank (seeded by the global step only)
                    dgen = torch.Generator(device).manual_seed(cfg["seed"] * 1_000_003 + global_step)
                with autocast():
                    out = step_model(xb, yb, generator=noise_gen, distance_generator=dgen)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                b = xb.shape[0]
                with torch.no_grad():
                    sums += torch.stack([out.loss.detach().double() * b, out.recon.detach().double().sum(),
                                         out.kl.detach().double().sum(), out.elbo.detach().double().sum(),
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
                if s % 50 == 49:
                    _check_finite(sums, epoch, global_step, ckpt_path, distributed, metrics)
            _check_finite(sums, epoch, global_step, ckpt_path, distributed, metrics)
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
            row["samples_per_s"] = n_seen / train_time
            row["epoch_time_s"] = train_time
            rng_noise = [noise_gen.get_state()]
            if distributed:
                rng_noise = [None] * world
                dist.all_gather_object(rng_noise, noise_gen.get_state())
            if rank == 0:
                test = evaluate(model, data.test_x, data.test_y, seed=cfg["seed"])
                row.update({f"test_{k}": v for k, v in test.items()})
                metrics.append(row)
                save_checkpoint(ckpt_path, dict(
                    format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, fastvae_version=_version(),
                    model_config=model.config, model=model.state_dict(), optimizer=opt.state_dict(),
                    epoch=epoch + 1, step=global_step, config=cfg, data_info=data.info(), metrics=metrics,
                    rng=dict(torch=torch.get_rng_state(), data=data_gen.get_state(),
                             noise=[t.cpu() for t in rng_noise])))
                _write_metrics(out_dir, metrics)
                if bar is None:
                    every = max(1, cfg["epochs"] // 10)
                    if (epoch + 1) % every == 0 or epoch + 1 == cfg["epochs"]:
                        _log(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {row['train_loss']:.3f}, "
                             f"test ELBO {row['test_elbo']:.3f}, {row['samples_per_s']:.0f} samples/s")
            else:
                metrics.append(row)
            if distributed:
                dist.barrier()
    finally:
        if bar is not None:
            bar.close()

    ranks_agree = _ranks_agree(model) if distributed else None
    summary = {}
    if rank == 0:
        summary = _finish(cfg, model, data, metrics, out_dir, ckpt_path, world, ranks_agree)
    if distributed:
        dist.barrier()
    return TrainResult(model=model, config=cfg, metrics=metrics, out=out_dir, summary=summary)


def _ranks_agree(model):
    """Whether every rank holds exactly the same parameters (DDP keeps them in lockstep; this checks it)."""
    flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat)
    return all(torch.equal(parts[0], q) for q in parts[1:])


def _progress(cfg, rank, total, initial):
    if rank != 0 or not cfg["progress"]:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=0.5,
                file=sys.stderr)


def _check_finite(sums, epoch, step, ckpt_path, distributed, metrics):
    ok = torch.isfinite(sums[:4]).all().to(torch.int32)
    if distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if not bool(ok.item()):
        kept = (f"the last good checkpoint, {ckpt_path} (epoch {metrics[-1]['epoch']}), is kept"
                if metrics else "no checkpoint was written yet")
        raise TrainingDiverged(
            f"the loss became NaN or inf in epoch {epoch + 1} (by step {step}); training stopped and {kept}. "
            f"Try a lower --lr, --variance fixed, or --amp none.")


def _write_metrics(out_dir, metrics):
    keys = []
    for m in metrics:
        keys += [k for k in m if k not in keys]
    tmp = os.path.join(out_dir, "metrics.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(metrics)
    os.replace(tmp, os.path.join(out_dir, "metrics.csv"))
    tmp = os.path.join(out_dir, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "metrics.json"))


def _version():
    from . import __version__
    return __version__


def save_pictures(model, data, out_dir, metrics=None, seed=0):
    """loss_curve.png, samples.png, reconstructions.png (pictures only) and latent.png (latent_dim 2); returns
    the paths written."""
    from . import plots
    written = []
    if metrics:
        p = os.path.join(out_dir, "loss_curve.png")
        plots.save_loss_curve(metrics, p)
        written.append(p)
    shape = data.image_shape
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    if shape is not None:
        n = 100 if model.n_classes else 64
        s = model.sample(n, generator=g).reshape(n, *shape)
        p = os.path.join(out_dir, "samples.png")
        plots.save_grid(s, p, ncol=10 if model.n_classes else 8)
        written.append(p)
        x = data.test_x[:16].to(device)
        y = data.test_y[:16].to(device) if model.n_classes else None
        r = model.reconstruct(x, y)
        p = os.path.join(out_dir, "reconstructions.png")
        plots.save_reconstructions(x.reshape(-1, *shape), r.reshape(-1, *shape), p)
        written.append(p)
    if model.latent_dim == 2:
        x = data.test_x.to(device)
        y = data.test_y.to(device) if model.n_classes else None
        with torch.no_grad():
            mu, _ = model.encode(x, y)
        p = os.path.join(out_dir, "latent.png")
        plots.save_latent_scatter(mu, data.test_y, p)
        written.append(p)
    return written


def _finish(cfg, model, data, metrics, out_dir, ckpt_path, world, ranks_agree=None):
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    final = evaluate(model, data.test_x, data.test_y, n_samples=cfg["eval_k"], seed=cfg["seed"]) if metrics else {}
    eval_time = time.perf_counter() - t0
    pictures = save_pictures(model, data, out_dir, metrics, seed=cfg["seed"])
    summary = dict(model=cfg["model"], data=data.name, epochs=len(metrics), world_size=world, device=str(device),
                   backend=cfg["backend"], checkpoint=ckpt_path,
                   metrics=[os.path.join(out_dir, "metrics.csv"), os.path.join(out_dir, "metrics.json")],
                   pictures=pictures)
    if ranks_agree is not None:
        summary["ranks_agree"] = ranks_agree
    if metrics:
        last = metrics[-1]
        summary.update(test_elbo=final["elbo"], train_loss=last["train_loss"],
                       samples_per_s=sum(m["samples_per_s"] for m in metrics[-5:]) / len(metrics[-5:]),
                       train_time_s=sum(m["epoch_time_s"] for m in metrics))
        if cfg["eval_k"]:
            summary.update(test_log_likelihood=final["log_likelihood"], eval_k=cfg["eval_k"], eval_time_s=eval_time)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = [f"fastvae: trained {cfg['model']} on {data.name} for {len(metrics)} epoch(s) "
             f"({world} process(es), {device}, backend {cfg['backend']})"]
    if metrics:
        lines.append(f"  test ELBO {summary['test_elbo']:.3f} nats/sample"
                     + (f", log-likelihood (K={cfg['eval_k']}) {summary['test_log_likelihood']:.3f}"
                        if cfg["eval_k"] else "")
                     + f"; {summary['samples_per_s']:.0f} training samples/s")
    lines += [f"  checkpoint: {ckpt_path}", f"  metrics:    {summary['metrics'][0]} (and .json)",
              f"  pictures:   {', '.join(pictures) if pictures else '(none)'}"]
    print("\n".join(lines), flush=True)
    return summary
