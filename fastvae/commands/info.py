"""`fastvae info`: the version, the installed distribution, torch, the built kernels and the devices."""
import os


def _distribution(name):
    """'<name> <version>' as installed, or a note that this fastvae is not an installed distribution."""
    from importlib import metadata
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return f"{name} not installed (a source checkout)"


def info_lines():
    import torch
    import fastvae
    bi = fastvae._C.build_info()
    lines = [f"fastvae {fastvae.__version__} ({os.path.dirname(fastvae.__file__)})",
             f"distribution: {_distribution(fastvae.DIST_NAME)}",
             f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
             f"kernels: CPU ({fastvae._C.cpu_isa()} in use; built {bi.get('cpu_isa')}), "
             + (f"CUDA for archs {bi.get('cuda_archs') or '?'}" if bi.get("cuda") else "CUDA not built")]
    lines.append("build: " + ", ".join(f"{k}={v}" for k, v in bi.items()))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"device cuda:{i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        lines.append(f"device: cpu ({torch.get_num_threads()} threads); no CUDA GPU visible")
    extra = [n for n in ("mmd", "sliced_wasserstein") if hasattr(fastvae, n)]
    lines.append(f"distance ops: {', '.join(extra) if extra else 'none in this build'}")
    return lines
