"""Loads the compiled extension, or says exactly why it cannot (never a silent fallback)."""
import importlib

import torch

_REBUILD = "rebuild it with `pip install --no-build-isolation -e .` (or `make build`) in the fastvae checkout"


def load_extension():
    try:
        ext = importlib.import_module("fastvae._C")
    except ImportError as e:
        raise ImportError(
            f"fastvae's compiled extension fastvae._C could not be loaded ({e}); torch {torch.__version__} is "
            f"installed. If it was never built, or was built against another torch, {_REBUILD}.") from e
    built_for = ext.build_info()["torch_version"]
    if built_for != torch.__version__:
        raise ImportError(
            f"fastvae._C was built for torch {built_for}, but torch {torch.__version__} is installed; {_REBUILD}.")
    return ext
