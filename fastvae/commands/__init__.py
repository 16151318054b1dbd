"""The subcommands of the `fastvae` command that read a checkpoint or report the install (fastvae/cli.py parses
the command line, trains, and dispatches to them):

  evaluate.py    `fastvae eval`: the test ELBO and importance-sampled log-likelihood of a checkpoint (and --refine)
  sample.py      `fastvae sample`: a PNG grid of samples
  info.py        `fastvae info`: version, torch, the built kernels, the devices
  checkpoint.py  the model of a checkpoint, as eval and sample load it (a refused checkpoint's message)

Each command module owns its settings (the flags cli.py's parser adds) and a run(args) returning the exit status."""
