"""The command never misreads what it was told: one table (fastvae.train.SETTINGS) checks every flag, TOML key and
config dict; bad values, folders and checkpoints end in one line naming the argument, never a traceback."""
import json
import math
import os

import numpy as np
import pytest
import torch

import fastvae
from fastvae import train as tr
from fastvae.cli import MAX_SAMPLES, main

TINY = ["--hidden-dims", "8", "--latent-dim", "2", "--batch-size", "512", "--epochs", "1", "--eval-k", "0",
        "--no-progress", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny trained run on the bundled digits, shared by the eval / sample / checkpoint tests."""
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def _fails(argv, capsys, match, code=None):
    """main(argv) ends with a one-line message matching `match` (SystemExit or a non-zero return), no traceback."""
    try:
        rc = main(argv)
        text = capsys.readouterr().err
    except SystemExit as e:
        rc = e.code
        text = (e.code if isinstance(e.code, str) else "") + capsys.readouterr().err
    assert rc not in (0, None), text
    if code is not None:
        assert rc == code
    assert "Traceback" not in text
    assert match in text, text
    return text


# ---- TOML keys: wrong types and ranges are named, never coerced --------------------------------------------------

TOML_CASES = [
    ("conv", '"false"', "conv must be true or false; got str 'false'"),
    ("compile", '"false"', "compile must be true or false; got str 'false'"),
    ("progress", '"no"', "progress must be true or false; got str 'no'"),
    ("resume", "1", "resume must be true or false; got int 1"),
    ("epochs", "1.9", "epochs must be an int from 0 to 2147483647; got float 1.9"),
    ("epochs", "2.0", "epochs must be an int from 0 to 2147483647; got float 2.0"),
    ("epochs", "true", "epochs must be an int from 0 to 2147483647; got bool True"),
    ("latent_dim", "2.7", "latent_dim must be an int from 1 to 2147483647; got float 2.7"),
    ("latent_dim", "0", "latent_dim must be an int from 1"),
    ("hidden_dims", "[0]", "hidden_dims must be a list of ints from 1 to 2147483647; got list [0]"),
    ("hidden_dims", "[-5]", "got list [-5]"),
    ("hidden_dims", "[[1]]", "got list [[1]]"),
    ("hidden_dims", "[true]", "got list [True]"),
    ("hidden_dims", '"512,256"', "got str '512,256'"),
    ("lr", '"fast"', "lr must be a finite number > 0 and <= 1e+30; got str 'fast'"),
    ("lr", "nan", "lr must be a finite number > 0 and <= 1e+30; got float nan"),
    ("lr", "0", "lr must be a finite number > 0 and <= 1e+30; got int 0"),
    ("lr", "true", "got bool True"),
    ("beta", "-1", "beta must be a finite number >= 0"),
    ("bandwidth", "inf", "bandwidth must be a finite number > 0; got float inf"),
    ("threads", "-2", "threads must be an int from 1 to 1024; got int -2"),
    ("device", '"tpu"', "device must be auto, cpu, cuda or cuda:N; got str 'tpu'"),
    ("device", '"gpu0"', "got str 'gpu0'"),
    ("data", "5", "data must be a data spec"),
    ("data", '""', "data must be a data spec"),
    ("out", '""', "out must be a non-empty string; got str ''"),
    ("out", "7", "out must be a non-empty string; got int 7"),
    ("seed", str(2**63 - 1), f"seed must be an int from 0 to 4294967295; got int {2**63 - 1}"),
    ("seed", "-1", "seed must be an int from 0"),
    ("model", '"gan"',
     "model must be one of vae, beta-vae, cvae, iwae, wae-mmd, swae, hvae, m2, vaegan; got str 'gan'"),
    ("amp", '"fp16"', "amp must be one of none, bf16"),
    ("amp", "false", "amp must be one of none, bf16, auto; got bool False"),
    ("binarize", "true", "binarize must be one of none, static, dynamic; got bool True"),
    ("likelihood", '"poisson"', "likelihood must be one of"),
    ("n_samples", "0", "n_samples must be an int from 1"),
    ("n-projections", "1.5", "n_projections must be an int"),
    ("batch_size", "0", "batch_size must be an int from 1"),
    ("eval_k", "-1", "eval_k must be an int from 0"),
    ("kernel", '"cosine"', "kernel must be one of"),
    ("latent_dimz", "3", "unknown configuration key 'latent_dimz'"),
    ("latent_dims", "3", "latent_dims must be a list of ints from 1 to 2147483647; got int 3"),
]


@pytest.mark.parametrize("key,value,message", TOML_CASES, ids=[f"{k}={v}" for k, v, _ in TOML_CASES])
def test_toml_values_are_checked_and_named(tmp_path, capsys, key, value, message):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"{key} = {value}\n")
    text = _fails(["train", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys, message)
    assert str(cfg) in text
    assert not (tmp_path / "o").exists()          # refused before anything was created


FLAG_CASES = [
    (["--epochs", "1.9"], "argument --epochs: epochs must be an int from 0 to 2147483647; got '1.9'"),
    (["--latent-dim", "2.5"], "argument --latent-dim: latent_dim must be an int"),
    (["--lr", "fast"], "argument --lr: lr must be a finite number > 0 and <= 1e+30; got 'fast'"),
    (["--lr", "inf"], "lr must be a finite number > 0 and <= 1e+30; got float inf"),
    (["--hidden-dims", "8,x"], "argument --hidden-dims: hidden_dims must be a list of ints"),
    (["--hidden-dims", "0"], "hidden_dims must be a list of ints from 1"),
    (["--device", "gpu0"], "argument --device: device must be auto, cpu, cuda or cuda:N; got str 'gpu0'"),
    (["--seed", str(2**63 - 1)], "argument --seed: seed must be an int from 0 to 4294967295"),
    (["--threads", "0"], "argument --threads: threads must be an int from 1"),
    (["--model", "gan"], "argument --model: model must be one of"),
    (["--out", ""], "argument --out: out must be a non-empty string"),
]


@pytest.mark.parametrize("flags,message", FLAG_CASES, ids=[" ".join(f) for f, _ in FLAG_CASES])
def test_flags_are_checked_by_the_same_table(capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        main(["train", *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_one_table_for_flags_toml_keys_and_python():
    """Every setting is a flag, its default passes its own check, and Python dicts are held to the same rules."""
    from fastvae.cli import _parser
    train_parser = _parser()._subparsers._group_actions[0].choices["train"]
    flags = {o for a in train_parser._actions for o in a.option_strings}
    for key, s in tr.SETTINGS.items():
        assert f"--{key.replace('_', '-')}" in flags, key
        if s.kind is bool:
            assert f"--no-{key.replace('_', '-')}" in flags, key
        assert s.check(s.default) == (list(s.default) if s.kind is list and s.default is not None
                                     else s.default), key
    with pytest.raises(TypeError, match="epochs must be an int .* got bool True"):
        tr.resolve_config({"epochs": True})
    with pytest.raises(TypeError, match="latent_dim must be an int .* got float 2.0"):
        tr.resolve_config({"latent_dim": 2.0})
    with pytest.raises(TypeError, match="conv must be true or false; got int 1"):
        tr.train({"conv": 1})
    with pytest.raises(ValueError, match="lr must be a finite number > 0 and <= 1e.30; got int 1000000"):
        tr.resolve_config({"lr": 10**400})
    cfg = tr.resolve_config({"latent_dim": np.int64(3), "lr": 1, "hidden_dims": (8, 4)})
    assert cfg["latent_dim"] == 3 and type(cfg["latent_dim"]) is int
    assert cfg["lr"] == 1.0 and type(cfg["lr"]) is float and cfg["hidden_dims"] == [8, 4]
    assert tr.resolve_config({"hidden_dims": []})["hidden_dims"] == []
    flags_cfg = tr.SETTINGS["hidden_dims"].parse("")
    assert flags_cfg == []


def test_the_docs_list_every_setting_and_its_resume_rule():
    doc = open(os.path.join(os.path.dirname(fastvae.__file__), "..", "docs", "vae.md")).read()
    # the settings table's rows: | `key` | allowed | default | resume | (other tables have other column counts)
    rows = {line.split("|")[1].strip(" `"): line.split("|")[-2].strip() for line in doc.splitlines()
            if line.startswith("| `") and len(line.split("|")) == 6}
    assert rows == {key: s.resume or "-" for key, s in tr.SETTINGS.items()}


# ---- files and folders named on the command line -------------------------------------------------------------------


def test_config_file_that_is_a_folder_or_binary(tmp_path, capsys):
    _fails(["train", "--config", str(tmp_path)], capsys, "cannot be read")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    _fails(["train", "--config", str(binary)], capsys, "is not valid TOML")
    _fails(["train", "--config", str(tmp_path / "missing.toml")], capsys, "not found")


def test_out_that_is_a_file_or_under_one(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    _fails(["train", "--out", str(f), *TINY], capsys, "is a file; give a folder")
    _fails(["train", "--out", str(f / "sub"), *TINY], capsys, "cannot write into")


def test_run_files_that_are_folders_are_refused_before_training(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    (out / "checkpoint.pt").mkdir(parents=True)
    trained = []
    monkeypatch.setattr(tr.loop, "_run", lambda *a: trained.append(a))
    _fails(["train", "--out", str(out), *TINY], capsys, f"{out / 'checkpoint.pt'} is a folder")
    assert not trained


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_out_folder(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        _fails(["train", "--out", str(out), *TINY], capsys, "cannot write into")
    finally:
        out.chmod(0o700)


# ---- eval and sample ------------------------------------------------------------------------------------------------


def test_eval_and_sample_flags(run_dir, tmp_path, capsys):
    for argv, message in [
            (["eval", str(run_dir), "-k", "-1"], "argument -k/--k/--n-samples: k must be an int from 1"),
            (["eval", str(run_dir), "--device", "gpu0"], "device must be auto, cpu, cuda or cuda:N"),
            (["eval", str(run_dir), "--seed", str(2**63 - 1)], "seed must be an int from 0 to 4294967295"),
            (["sample", str(run_dir), "-n", "10000000"], f"argument -n: n must be an int from 1 to {MAX_SAMPLES}"),
            (["sample", str(run_dir), "-n", "0"], "argument -n: n must be an int from 1"),
            (["sample", str(run_dir), "--device", "tpu"], "device must be")]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err, argv
    _fails(["sample", str(run_dir), "--out", str(tmp_path / "missing" / "s.png")], capsys,
           f"the folder {tmp_path / 'missing'} does not exist")
    _fails(["sample", str(run_dir), "--out", str(tmp_path)], capsys, "is a folder")
    assert main(["sample", str(run_dir), "-n", "4", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0


def test_eval_on_data_of_another_shape_or_without_labels(run_dir, tmp_path, capsys):
    other = tmp_path / "flat.npy"
    np.save(other, np.random.default_rng(0).random((50, 5, 5), dtype=np.float32))
    _fails(["eval", str(run_dir), "--data", f"npy:{other}", "--device", "cpu"], capsys,
           "its samples have shape (1, 5, 5)")
    # a cvae: labels are needed, and within its classes
    cvae = tmp_path / "cvae.pt"
    _craft(run_dir, cvae, new_model=dict(input_dim=64, latent_dim=2, hidden_dims=[8], n_classes=3))
    unlabelled = tmp_path / "u.npy"
    np.save(unlabelled, np.random.default_rng(0).random((50, 1, 8, 8), dtype=np.float32))
    _fails(["eval", str(cvae), "--data", f"npy:{unlabelled}", "--device", "cpu", "-k", "1"], capsys,
           "it has no labels")
    _fails(["eval", str(cvae), "--device", "cpu", "-k", "1"], capsys, "its labels run from 0 to 9")


def test_cvae_on_unlabelled_data(tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((40, 6), dtype=np.float32))
    _fails(["train", "--model", "cvae", "--data", f"npy:{x}", "--out", str(tmp_path / "o"), *TINY], capsys,
           "needs labelled data")


def test_a_model_too_large_for_memory_is_refused_before_allocating(tmp_path, capsys):
    # about 2 TB of parameters, 340 TB of activations, 4 TB of projections: named, nothing allocated
    for i, (flags, named) in enumerate([(["--hidden-dims", "2147483647"], "hidden_dims [2147483647]"),
                                        (["--n-samples", "2147483647"], "n_samples 2147483647"),
                                        (["--model", "swae", "--n-projections", "2147483647"],
                                         "n_projections 2147483647")]):
        text = _fails(["train", "--out", str(tmp_path / str(i)), *TINY, *flags], capsys, "GiB to train")
        assert named in text and "lower one of them" in text
    # sizes whose tensors cannot be described at all (more than 2^63 elements)
    _fails(["train", "--out", str(tmp_path / "x"), *TINY, "--hidden-dims", "2147483647,2147483647"], capsys,
           "cannot be built (latent_dim 2, hidden_dims [2147483647, 2147483647])")
    _fails(["train", "--out", str(tmp_path / "y"), *TINY, "--latent-dim", "2147483647", "--posterior", "full"],
           capsys, "cannot be built")


def test_out_of_memory_is_a_message(run_dir, capsys, monkeypatch):
    def oom(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes")
    monkeypatch.setattr(tr, "evaluate", oom)
    _fails(["eval", str(run_dir), "--device", "cpu"], capsys, "out of memory")


# ---- checkpoints: every entry that is read is checked first ---------------------------------------------------------


def _craft(run_dir, path, new_model=None, drop=(), **entries):
    """A copy of the run's checkpoint with some entries replaced (new_model: another model's config and weights)."""
    ckpt = tr.load_checkpoint(run_dir)
    if new_model is not None:
        ckpt["model_config"] = new_model
        ckpt["model"] = fastvae.models.build_model(new_model).state_dict()
    ckpt.update(entries)
    for key in drop:
        ckpt.pop(key)
    torch.save(ckpt, path)
    return path


def _config_without(run_dir, key):
    cfg = dict(tr.load_checkpoint(run_dir)["config"])
    cfg.pop(key)
    return cfg


def _checkpoint_cases(run_dir):
    good = tr.load_checkpoint(run_dir)
    big_config = dict(good["model_config"], hidden_dims=[10**12])
    return [
        (dict(version="1"), "its version entry must be an int from 1 to 1; got str '1'"),
        (dict(version=True), "got bool True"),
        (dict(version=0), "got int 0"),
        (dict(model_config=dict(good["model_config"], colour="red")), "unknown key(s) ['colour']"),
        (dict(model_config=big_config), "encoder.0.weight has shape (8, 64), the model's is (1000000000000, 64)"),
        (dict(model_config=dict(good["model_config"], likelihood="poisson")), "does not describe a fastvae.VAE"),
        (dict(config=_config_without(run_dir, "data")), "its 'config' entry lacks data"),
        (dict(config=dict(good["config"], data=5)), "its 'config' entry: data must be a data spec"),
        (dict(config=dict(good["config"], epochs="3")), "epochs must be an int"),
        (dict(data_info="digits"), "its 'data_info' entry must be a dict; got str"),
        (dict(data_info=dict(good["data_info"], shape=[0])), "must hold a shape of positive ints"),
        (dict(data_info=dict(good["data_info"], shape="1,8,8")), "'shape' entry must be a list"),
        (dict(data_info=dict(good["data_info"], shape=[1, 9, 9])), "data_info' shape (1, 9, 9) is not the model's"),
        (dict(data_info=dict(good["data_info"], n_classes=-1)), "counts >= 0"),
        (dict(epoch="1"), "its 'epoch' entry must be an int; got str"),
        (dict(epoch=5), "its 'epoch' (5) must count its 'metrics' rows"),
        (dict(model={"w": 1}), "must map names to tensors"),
        (dict(model=dict(good["model"], extra=torch.zeros(1))), "extra is not a parameter of the model"),
    ]


def test_crafted_checkpoints_are_refused_with_the_entry_named(run_dir, tmp_path, capsys):
    for i, (entries, message) in enumerate(_checkpoint_cases(run_dir)):
        path = _craft(run_dir, tmp_path / f"c{i}.pt", **entries)
        with pytest.raises(tr.CheckpointError, match=".*") as e:
            tr.model_from_checkpoint(path)
        assert message in str(e.value) and str(path) in str(e.value), (entries.keys(), str(e.value))
        assert "newer" not in str(e.value)
    path = _craft(run_dir, tmp_path / "nodata.pt", drop=("data_info",))
    _fails(["sample", str(path), "--device", "cpu"], capsys, "lacks the 'data_info' entry")
    _fails(["eval", str(tmp_path / "c0.pt"), "--device", "cpu"], capsys, "version entry must be an int")


def test_a_huge_crafted_model_is_refused_without_allocating(run_dir, tmp_path, monkeypatch):
    """hidden_dims 10^12 is compared on the meta device; nothing of its size is ever allocated."""
    good = tr.load_checkpoint(run_dir)["model_config"]
    path = _craft(run_dir, tmp_path / "big.pt", model_config=dict(good, hidden_dims=[10**12]))
    built = []
    real_build = fastvae.models.build_model
    monkeypatch.setattr(tr.build, "build_model",
                        lambda cfg: built.append(torch.get_default_device()) or real_build(cfg))
    with pytest.raises(tr.CheckpointError, match="do not fit the model"):
        tr.model_from_checkpoint(path)
    assert built == [torch.device("meta")]


def test_resume_reads_no_broken_optimizer_state(run_dir, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    _craft(run_dir, out / "checkpoint.pt", optimizer={"state": 5})
    _fails(["train", "--out", str(out), "--resume", "--epochs", "2"], capsys, "cannot resume from it")
    assert math.isfinite(tr.load_checkpoint(out)["metrics"][-1]["test_elbo"])


# ---- the settings of the published recipes (configs/) and --amp auto ----------------------------------------------


def test_recipe_settings_are_checked_and_parsed():
    s = tr.SETTINGS
    assert s["kernel_scales"].parse("0.1,0.2,0.5,1,2,5,10") == [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
    assert type(tr.resolve_config({"kernel_scales": [1, 2]})["kernel_scales"][0]) is float
    for value, err, message in [([0.0], ValueError, "kernel_scales must be a list of finite numbers > 0; got"),
                                ([float("inf")], ValueError, "kernel_scales must be a list of finite numbers"),
                                ([True], TypeError, "kernel_scales must be a list of finite numbers"),
                                ("1,2", TypeError, "kernel_scales must be a list"),
                                (1.0, TypeError, "kernel_scales must be a list")]:
        with pytest.raises(err, match=message):
            tr.resolve_config({"kernel_scales": value})
    with pytest.raises(ValueError, match="kernel_scales must be .*; got 'x'"):
        s["kernel_scales"].parse("x")
    with pytest.raises(ValueError, match=r"adam_beta1 must be a finite number >= 0 and < 1; got float 1.0"):
        tr.resolve_config({"adam_beta1": 1.0})
    assert tr.resolve_config({"adam_beta2": 0})["adam_beta2"] == 0.0
    with pytest.raises(ValueError, match="adam_eps must be a finite number > 0"):
        tr.resolve_config({"adam_eps": 0.0})
    with pytest.raises(ValueError, match="activation must be one of silu, tanh, relu; got str 'gelu'"):
        tr.resolve_config({"activation": "gelu"})
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, iwae"):
        tr.resolve_config({"lr_schedule": "cosine"})


def test_every_recipe_config_resolves():
    import tomllib
    folder = os.path.join(os.path.dirname(fastvae.__file__), "..", "configs")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".toml"))
    assert {"iwae-k1.toml", "iwae-k5.toml", "iwae-k50.toml", "wae-mmd.toml", "swae.toml"} <= set(names)
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            cfg = tr.resolve_config(tomllib.load(f))
        assert cfg["data"] == "fashion" and cfg["likelihood"] == "bernoulli", name


def test_the_iwae_schedule_is_the_papers_stages():
    """Stage i of 3^i epochs (starting at epoch (3^i - 1) / 2) at 10^(-i/7); the last stage goes on."""
    from fastvae.train.loop import lr_factor
    starts = [(3**i - 1) // 2 for i in range(8)]                # 0, 1, 4, 13, 40, 121, 364, 1093
    for i, start in enumerate(starts):
        assert lr_factor("iwae", start) == pytest.approx(10 ** (-i / 7), rel=1e-12)
        if start:
            assert lr_factor("iwae", start - 1) == pytest.approx(10 ** (-(i - 1) / 7), rel=1e-12)
    assert lr_factor("iwae", 10**6) == pytest.approx(0.1)
    assert lr_factor("constant", 500) == 1.0


@pytest.mark.usefixtures("one_thread")
def test_adam_settings_and_the_schedule_reach_the_optimizer(tmp_path):
    out = tmp_path / "run"
    cfg = dict(hidden_dims=[8], latent_dim=2, batch_size=512, progress=False, out=str(out), eval_k=0, threads=1,
               epochs=2, adam_beta1=0.99, adam_beta2=0.9, adam_eps=1e-4, lr_schedule="iwae", activation="tanh")
    res = tr.train(cfg)
    assert any(isinstance(m, torch.nn.Tanh) for m in res.model.modules())
    groups = tr.load_checkpoint(out)["optimizer"]["param_groups"]
    for g, base in zip(groups, (1e-3, 1e-3 * tr.VARIANCE_LR_SCALE)):
        assert g["betas"] == (0.99, 0.9) and g["eps"] == 1e-4
        assert g["lr"] == pytest.approx(base * 10 ** (-1 / 7), rel=1e-12)   # epoch 2 is stage 1
    # resume applies new optimizer settings; the schedule continues from the epoch
    tr.train(dict(cfg, epochs=5, resume=True, adam_beta1=0.5))
    groups = tr.load_checkpoint(out)["optimizer"]["param_groups"]
    assert groups[0]["betas"] == (0.5, 0.9) and groups[0]["lr"] == pytest.approx(1e-3 * 10 ** (-2 / 7), rel=1e-12)
    with pytest.raises(ValueError, match=r"activation \(the run's 'tanh', given 'relu'\)"):
        tr.train(dict(cfg, epochs=6, resume=True, activation="relu"))


def test_kernel_scales_sum_the_mmd_over_bandwidths_h_sqrt_s():
    """The WAE paper's kernel: imq summed over C = 2 d h^2 s: fastvae.mmd with bandwidths h sqrt(s), which is
    the sum of the one-scale MMDs (the same prior draw: the same generator seed)."""
    torch.manual_seed(0)
    scales = [0.1, 1.0, 10.0]
    model = fastvae.VAE(12, 3, [8], divergence="mmd", beta=0.0, bandwidth=2.0, kernel_scales=scales)
    assert model.config["kernel_scales"] == scales
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))

    def dist(m):
        return m.regulariser.distance(m.ops, z, torch.Generator().manual_seed(5))
    one = [dist(fastvae.VAE(12, 3, [8], divergence="mmd", beta=0.0, bandwidth=2.0 * s ** 0.5)) for s in scales]
    # float32 pair sums over 64 x 64 pairs of kernel values <= 1: a few ulp of a sum of order 0.1
    torch.testing.assert_close(dist(model), sum(one), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kernel_scales"):
        fastvae.VAE(12, 3, [8], kernel_scales=[0.0])


def test_amp_auto_resolves_by_the_devices_bf16_matmuls(tmp_path):
    from fastvae.train.loop import cpu_has_native_bf16, resolve_amp
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert tr.resolve_config({})["amp"] == "auto"                            # the default
    assert resolve_amp("auto", cpu, cpu_bf16=lambda: True) == "bf16"
    assert resolve_amp("auto", cpu, cpu_bf16=lambda: False) is None
    assert resolve_amp("auto", cuda, cuda_bf16=lambda: True) == "bf16"
    assert resolve_amp("auto", cuda, cuda_bf16=lambda: False) is None
    assert resolve_amp("bf16", cpu, cpu_bf16=lambda: False) == "bf16"       # asked for: given
    assert resolve_amp("none", cpu, cpu_bf16=lambda: True) is None
    assert resolve_amp(None, cpu, cpu_bf16=lambda: True) is None          # a run recorded before "auto"
    info = tmp_path / "cpuinfo"
    for flags, cap, want in [("fpu avx512f avx512_bf16 amx_tile", "AVX512", True),
                             ("fpu avx512f amx_bf16", "AVX512", True),
                             ("fpu avx512f avx512bw", "AVX512", False),   # AVX-512 without bf16: converted
                             ("fpu avx512_bf16", "AVX2", False),          # torch not on its AVX-512 kernels
                             ("fpu neon bf16", "DEFAULT", False)]:
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\n")
        assert cpu_has_native_bf16(cap, str(info)) is want, (flags, cap)
    assert cpu_has_native_bf16("AVX512", str(tmp_path / "missing")) is False


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_is_recorded_with_what_it_resolved_to(tmp_path, monkeypatch, native):
    from fastvae.train import amp
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: native)
    out = tmp_path / "run"
    res = tr.train(dict(hidden_dims=[8], latent_dim=2, batch_size=512, progress=False, out=str(out), eval_k=0,
                        threads=1, epochs=1, amp="auto", device="cpu"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["amp"] == "auto" and summary["amp_used"] == ("bf16" if native else "none")
    assert res.summary["amp_used"] == summary["amp_used"]
    assert json.loads((out / "config.json").read_text())["amp"] == "auto"


def test_eval_writes_the_per_image_estimates(run_dir, tmp_path, capsys):
    path = tmp_path / "logp.npy"
    assert main(["eval", str(run_dir), "-k", "4", "--limit", "7", "--json", "--per-image", str(path)]) == 0
    res = json.loads(capsys.readouterr().out)
    logp = np.load(path)
    assert logp.shape == (7,) and logp.dtype == np.float64
    # the same float64 values, summed in another order: a few ulp of a sum of 7 terms
    assert -logp.mean() == pytest.approx(res["nll"], rel=1e-12)
    _fails(["eval", str(run_dir), "-k", "2", "--per-image", str(tmp_path / "no" / "x.npy")], capsys,
           "--per-image")
