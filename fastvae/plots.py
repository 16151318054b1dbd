"""The PNGs of a run (matplotlib, Agg backend): loss curve, sample grid, reconstructions, latent scatter, and
save_pictures, which draws all of them for a trained model."""
import math
import os

import torch


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    """Writes next to path and renames, so a reader never sees half a PNG (and a failed write leaves none)."""
    tmp = f"{path}.{os.getpid()}.tmp.png"
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def image_grid(images, ncol=None):
    """(N, C, H, W) in [0, 1] -> one (H', W', C) array with 1-pixel gaps, for imshow."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.ones(c, nrow * (h + 1) + 1, ncol * (w + 1) + 1)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[i]
    grid = grid.permute(1, 2, 0)
    return grid[..., 0].numpy() if c == 1 else grid.numpy()


def save_grid(images, path, title=None, ncol=None):
    plt = _plt()
    grid = image_grid(images, ncol)
    fig, ax = plt.subplots(figsize=(min(8, 0.5 + grid.shape[1] / 12), min(8, 0.5 + grid.shape[0] / 12)))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, path)
    plt.close(fig)


def save_reconstructions(x, x_hat, path, n=16):
    """Originals (odd rows) above their reconstructions (even rows)."""
    x, x_hat = x[:n].detach().cpu(), x_hat[:n].detach().cpu()
    ncol = min(8, x.shape[0])
    rows = []
    for i in range(0, x.shape[0], ncol):
        rows += [x[i:i + ncol], x_hat[i:i + ncol]]
    save_grid(torch.cat(rows), path, "originals (odd rows) / reconstructions (even rows)", ncol=ncol)


def save_loss_curve(metrics, path, title=None):
    """The train and test loss per epoch, and the test -ELBO where it is not the test loss (a plain VAE's loss is
    its -ELBO: one line, labelled so); markers on every point, so that a one-epoch run shows its point."""
    plt = _plt()
    epochs = [m["epoch"] for m in metrics]
    marker = dict(marker="o", markersize=4 if len(metrics) <= 50 else 0)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [m["train_loss"] for m in metrics], label="train loss", **marker)
    test_loss = [m["test_loss"] for m in metrics] if all("test_loss" in m for m in metrics) else None
    neg_elbo = [-m["test_elbo"] for m in metrics] if all("test_elbo" in m for m in metrics) else None
    same = test_loss is not None and neg_elbo is not None and all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(test_loss, neg_elbo))
    if test_loss is not None:
        ax.plot(epochs, test_loss, label="test loss (= test -ELBO)" if same else "test loss", **marker)
    if neg_elbo is not None and not same:
        ax.plot(epochs, neg_elbo, "--", label="test -ELBO", **marker)
    ax.set_title(f"{title + ': ' if title else ''}loss per epoch ({len(metrics)} epoch{'s' * (len(metrics) != 1)})",
                 fontsize=10)
    if len(metrics) == 1:
        ax.set_xticks(epochs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per sample")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def save_latent_scatter(z, labels, path):
    plt = _plt()
    z = z.detach().float().cpu()
    fig, ax = plt.subplots(figsize=(5, 5))
    c = None if labels is None else labels.detach().cpu()
    sc = ax.scatter(z[:, 0], z[:, 1], c=c, s=6, **({} if c is None else {"cmap": "tab10"}))
    if c is not None:
        fig.colorbar(sc, ax=ax)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title("test set, posterior means")
    _save(fig, path)
    plt.close(fig)


def save_pictures(model, data, out_dir, metrics=None, seed=0, run=None):
    """loss_curve.png, samples.png, reconstructions.png (pictures only) and latent.png (latent_dim 2); returns
    the paths written. run: what was trained, for the titles ("vae on digits")."""
    written = []
    run = run or f"{type(model).__name__} on {data.name}"
    epochs = f", epoch {metrics[-1]['epoch']}" if metrics else ""
    if metrics:
        p = os.path.join(out_dir, "loss_curve.png")
        save_loss_curve(metrics, p, title=run)
        written.append(p)
    shape = data.image_shape
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    if shape is not None:
        n = 100 if model.n_classes else 64
        s = model.sample(n, generator=g).reshape(n, *shape)
        p = os.path.join(out_dir, "samples.png")
        save_grid(s, p, f"{n} samples of {run}{epochs}\n(the decoder's means at z drawn from the prior)",
                  ncol=10 if model.n_classes else 8)
        written.append(p)
        x = data.test_x[:16].to(device)
        y = data.test_y[:16].to(device) if model.n_classes else None
        r = model.reconstruct(x, y)
        p = os.path.join(out_dir, "reconstructions.png")
        save_reconstructions(x.reshape(-1, *shape), r.reshape(-1, *shape), p)
        written.append(p)
    if model.latent_dim == 2:
        x = data.test_x.to(device)
        y = data.test_y.to(device) if model.n_classes else None
        with torch.no_grad():
            mu, _ = model.encode(x, y)
        p = os.path.join(out_dir, "latent.png")
        save_latent_scatter(mu, data.test_y, p)
        written.append(p)
    return written
