import torch

import fastvae


def test_extension_loads_and_reports_build():
    info = fastvae._C.build_info()
    assert info["torch_version"] == torch.__version__
    assert info["cpu_isa"] in ("avx512", "avx2", "baseline")
