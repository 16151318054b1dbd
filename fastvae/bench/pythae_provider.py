"""pythae (the VAE library users pick, https://github.com/clementchadebec/benchmark_VAE) as an optional provider:
its VAE, IWAE and WAE_MMD with the networks fastvae builds (the same MLP, the same widths and activation), so that
the two libraries differ in what each does around the networks (losses, sampling, training loop) only.

  - `pythae_step(kind, ...)`: one training step (forward, loss, backward, Adam step) of a pythae model, as the
    suite's e2e ops time it (fastvae/bench/e2e.py);
  - `to_fastvae(model)`: a fastvae.VAE holding a trained pythae model's weights, so that fastvae's importance-sampled
    estimator (VAE.log_likelihood, fastvae eval) evaluates it exactly as it evaluates fastvae's own models;
  - `python -m fastvae.bench.pythae_provider --out DIR`: the side-by-side run (time per epoch, test NLL) of
    fastvae and pythae on Fashion-MNIST (see main()).

Without pythae installed every entry raises Unavailable("pythae is not installed ...") and the suite's rows say so.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

import fastvae
from fastvae.models.networks import mlp

from .ops import MMD_SCALES, Unavailable

KINDS = ("vae", "iwae", "wae-mmd")


def _pythae():
    try:
        import pythae.models as models
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
    except Exception as e:    # not installed, or broken against this torch
        raise Unavailable(f"pythae is not installed or not importable ({type(e).__name__}: {e}); "
                          f"pip install pythae") from e
    return models, ModelOutput, BaseEncoder, BaseDecoder


def build(kind, input_dim=784, latent_dim=16, hidden_dims=(512, 256), activation="silu", *, n_samples=5,
          reg_weight=10.0, likelihood="bernoulli"):
    """A pythae model of kind vae, iwae (n_samples) or wae-mmd (imq summed over the WAE paper's scales, reg_weight)
    whose encoder and decoder are fastvae's MLPs (fastvae.models.networks.mlp). likelihood "bernoulli" is pythae's
    "bce" (the decoder outputs sigmoid probabilities), "gaussian" its "mse" (unit variance); pythae's WAE_MMD has
    "mse" only and a deterministic encoder."""
    models, ModelOutput, BaseEncoder, BaseDecoder = _pythae()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    d, wae = latent_dim, kind == "wae-mmd"
    bce = likelihood == "bernoulli" and not wae

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = mlp([input_dim, *hidden_dims, d if wae else 2 * d], activation=activation)

        def forward(self, x):
            h = self.net(x.reshape(x.shape[0], -1))
            if wae:
                return ModelOutput(embedding=h)
            return ModelOutput(embedding=h[:, :d], log_covariance=h[:, d:])

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = mlp([d, *hidden_dims[::-1], input_dim], activation=activation)

        def forward(self, z):
            out = self.net(z)
            return ModelOutput(reconstruction=torch.sigmoid(out) if bce else out)

    common = dict(input_dim=(input_dim,), latent_dim=d)
    if kind == "vae":
        cfg = models.VAEConfig(**common, reconstruction_loss="bce" if bce else "mse")
        cls = models.VAE
    elif kind == "iwae":
        cfg = models.IWAEConfig(**common, reconstruction_loss="bce" if bce else "mse", number_samples=n_samples)
        cls = models.IWAE
    else:
        cfg = models.WAE_MMD_Config(**common, kernel_choice="imq", reg_weight=reg_weight, kernel_bandwidth=1.0,
                                    scales=list(MMD_SCALES))
        cls = models.WAE_MMD
    return cls(cfg, encoder=Encoder(), decoder=Decoder())


def pythae_step(kind, device, dtype=torch.float32, *, amp=None, lr=1e-3, **kw):
    """One training step of a pythae model (its forward and loss, backward, Adam step) as a callable of a batch x;
    amp "bf16": under torch.autocast (pythae's own amp flag is CUDA-only, and off for its bce loss)."""
    _, ModelOutput, _, _ = _pythae()
    from pythae.data.datasets import DatasetOutput
    torch.manual_seed(0)
    model = build(kind, **kw).to(device=device, dtype=dtype)
    model.device = device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ctx = (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)) if amp == "bf16" else None

    def step(x):
        opt.zero_grad(set_to_none=True)
        if ctx is None:
            loss = model(DatasetOutput(data=x)).loss
        else:
            with ctx():
                loss = model(DatasetOutput(data=x)).loss
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def to_fastvae(model, activation="silu"):
    """A fastvae.VAE (Bernoulli likelihood for pythae's bce, unit-variance Gaussian for its mse) with the weights of
    a trained pythae VAE or IWAE: the same networks, so fastvae's estimator evaluates the same model."""
    cfg = model.model_config
    if not hasattr(model.encoder, "net") or not hasattr(model.decoder, "net"):
        raise TypeError("to_fastvae takes the models that build() makes (fastvae's MLPs inside pythae)")
    if getattr(cfg, "reconstruction_loss", "mse") == "bce":
        likelihood, variance = "bernoulli", "learned"
    else:
        likelihood, variance = "gaussian", "fixed"
    linears = [m for m in model.encoder.net if isinstance(m, torch.nn.Linear)]
    hidden = [m.out_features for m in linears[:-1]]
    out = fastvae.VAE(cfg.input_dim[0], cfg.latent_dim, hidden, likelihood=likelihood, variance=variance,
                      activation=activation)
    out.encoder.load_state_dict(model.encoder.net.state_dict())
    out.decoder.load_state_dict(model.decoder.net.state_dict())
    return out.eval()


# ---- the side-by-side run ----------------------------------------------------------------------------------------

def _pythae_epochs(model, x, epochs, batch_size, lr, seed):
    """Trains with pythae's own BaseTrainer (its DataLoader, Adam, loop); returns the seconds of each epoch's
    train_step (its evaluation and saving are not run)."""
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    x = BaseDataset(x, torch.zeros(x.shape[0]))      # what pythae's TrainingPipeline makes of a tensor
    with tempfile.TemporaryDirectory() as tmp:
        cfg = BaseTrainerConfig(output_dir=tmp, num_epochs=epochs, learning_rate=lr,
                                per_device_train_batch_size=batch_size, optimizer_cls="Adam", seed=seed,
                                no_cuda=True)
        trainer = BaseTrainer(model, train_dataset=x, training_config=cfg)
        trainer.prepare_training()
        times = []
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            trainer.train_step(epoch)
            times.append(time.perf_counter() - t0)
    return times


def _fastvae_run(kind, data, args, out):
    from fastvae import train as tr
    cfg = dict(model=kind, data="fashion", binarize="static", likelihood="bernoulli", latent_dim=args.latent_dim,
               hidden_dims=list(args.hidden_dims), batch_size=args.batch_size, lr=args.lr, epochs=args.epochs,
               out=out, overwrite=True, progress=False, eval_k=0, threads=args.threads, seed=args.seed,
               device="cpu", amp="none")         # float32, as pythae trains
    if kind == "iwae":
        cfg["n_samples"] = args.n_samples
    if kind == "wae-mmd":     # pythae's WAE: squared error (a unit-variance Gaussian), imq over the scales
        cfg.update(likelihood="gaussian", variance="fixed", binarize=None, reg_weight=args.reg_weight / 2,
                   kernel="imq", bandwidth=1.0, kernel_scales=list(MMD_SCALES))
    res = tr.train(cfg, data=data)
    return res.model, [m["epoch_time_s"] for m in res.metrics]


def _nll(model, test_x, args):
    from fastvae import train as tr
    logp = []
    res = tr.evaluate(model, test_x, n_samples=args.k, seed=args.seed, per_image=logp)
    return res, torch.cat(logp)


def main(argv=None):
    """fastvae and pythae side by side on Fashion-MNIST: VAE, IWAE (k) and WAE-MMD with the same MLP, data
    (statically binarised for the Bernoulli models; the [0, 1] pixels for WAE-MMD, whose pythae cost is the squared
    error), Adam, lr and batch; time per epoch of each library's own training loop, and the test NLL of VAE and
    IWAE by fastvae's importance-sampled estimator on the same first --limit test images with the same seed."""
    p = argparse.ArgumentParser(prog="python -m fastvae.bench.pythae_provider", description=main.__doc__)
    p.add_argument("--out", required=True, help="folder for results.json and results.md")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--hidden-dims", type=lambda s: [int(t) for t in s.split(",")], default=[512, 256])
    p.add_argument("--n-samples", type=int, default=5, help="IWAE's k")
    p.add_argument("--reg-weight", type=float, default=10.0, help="WAE-MMD's lambda (pythae's squared-error scale)")
    p.add_argument("-k", "--k", type=int, default=1000, help="importance samples of the test NLL")
    p.add_argument("--limit", type=int, default=1000, help="the first N test images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default=",".join(KINDS))
    args = p.parse_args(argv)
    _pythae()
    from fastvae.data import load_data
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    binary = load_data("fashion", binarize="static")
    plain = load_data("fashion")
    rows = []
    for kind in args.models.split(","):
        data = plain if kind == "wae-mmd" else binary
        flat = data.train_x.reshape(data.train_x.shape[0], -1)
        test_x = data.test_x[:args.limit].reshape(min(args.limit, data.test_x.shape[0]), -1)
        print(f"{kind}: fastvae", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            fv_model, fv_times = _fastvae_run(kind, data, args, os.path.join(tmp, "run"))
        print(f"{kind}: pythae", file=sys.stderr, flush=True)
        torch.manual_seed(args.seed)
        py_model = build(kind, latent_dim=args.latent_dim, hidden_dims=args.hidden_dims, n_samples=args.n_samples,
                         reg_weight=args.reg_weight)
        py_times = _pythae_epochs(py_model, flat, args.epochs, args.batch_size, args.lr, args.seed)
        row = dict(model=kind, fastvae_epoch_s=sum(fv_times) / len(fv_times),
                   pythae_epoch_s=sum(py_times) / len(py_times), epochs=args.epochs)
        if kind != "wae-mmd":
            print(f"{kind}: NLL at K={args.k} on {test_x.shape[0]} images", file=sys.stderr, flush=True)
            fv_res, fv_lp = _nll(fv_model.eval(), test_x, args)
            py_res, py_lp = _nll(to_fastvae(py_model.cpu()), test_x, args)
            diff = py_lp - fv_lp            # pythae's NLL minus fastvae's, image by image
            row.update(fastvae_nll=fv_res["nll"], fastvae_nll_se=fv_res["nll_se"], pythae_nll=py_res["nll"],
                       pythae_nll_se=py_res["nll_se"], nll_diff=-diff.mean().item(),
                       nll_diff_se=diff.std().item() / math.sqrt(diff.numel()))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    from importlib.metadata import version
    env = dict(torch=torch.__version__, pythae=version("pythae"), threads=args.threads,
               argv=sys.argv[1:] if argv is None else list(argv), k=args.k, limit=args.limit, epochs=args.epochs,
               batch_size=args.batch_size, lr=args.lr, latent_dim=args.latent_dim, hidden_dims=args.hidden_dims,
               n_samples=args.n_samples, reg_weight=args.reg_weight)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(env=env, rows=rows), f, indent=1)
    md = markdown(rows, env)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


def markdown(rows, env):
    lines = [f"fastvae {fastvae.__version__} vs pythae {env['pythae']} on Fashion-MNIST, CPU, {env['threads']} torch "
             f"thread(s); MLP 784-{'-'.join(map(str, env['hidden_dims']))}-{env['latent_dim']} (SiLU), Adam lr "
             f"{env['lr']}, batch {env['batch_size']}, {env['epochs']} epoch(s) each; IWAE k = {env['n_samples']}. "
             f"NLL: fastvae's importance-sampled estimator at K = {env['k']} on the first {env['limit']} test images "
             f"(statically binarised), the same seed for both; the difference is taken image by image.", "",
             "| model | fastvae s/epoch | pythae s/epoch | pythae / fastvae time | fastvae NLL (SE) | pythae NLL (SE) "
             "| pythae - fastvae NLL (SE of the paired difference) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        nll = ("| n/a | n/a | n/a (pythae's WAE encoder is deterministic: no q(z|x) to sample) |"
               if "fastvae_nll" not in r else
               f"| {r['fastvae_nll']:.2f} ({r['fastvae_nll_se']:.2f}) | {r['pythae_nll']:.2f} "
               f"({r['pythae_nll_se']:.2f}) | {r['nll_diff']:+.2f} ({r['nll_diff_se']:.2f}) |")
        lines.append(f"| {r['model']} | {r['fastvae_epoch_s']:.2f} | {r['pythae_epoch_s']:.2f} | "
                     f"{r['pythae_epoch_s'] / r['fastvae_epoch_s']:.2f}x " + nll)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
