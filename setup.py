"""Build of fastvae._C: CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Environment switches:
  FASTVAE_CUDA=1   require the CUDA build (fail if torch or nvcc cannot do it)
  FASTVAE_CUDA=0   CPU only, even where CUDA is available
  TORCH_CUDA_ARCH_LIST  GPU architectures (default: the visible GPU's, else "9.0")
  MAX_JOBS         parallel compile jobs (ninja)
"""
import glob
import os
import shutil

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda():
    flag = os.environ.get("FASTVAE_CUDA", "auto").lower()
    have_nvcc = cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None
    possible = torch.version.cuda is not None and have_nvcc
    if flag in ("0", "false", "no", "off"):
        return False
    if flag in ("1", "true", "yes", "on"):
        if not possible:
            raise RuntimeError(
                f"FASTVAE_CUDA=1 but torch {torch.__version__} has CUDA {torch.version.cuda} and nvcc "
                f"{'was' if have_nvcc else 'was not'} found")
        return True
    return possible


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


with_cuda = want_cuda()
if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""

defines = [f'-DFASTVAE_TORCH_VERSION="{torch.__version__}"', f'-DFASTVAE_CUDA_ARCHS="{archs}"']
cxx = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", *defines]
# Binding files: csrc/ops*.cpp (schemas, checks, CPU dispatch), csrc/ops*_cuda.cpp (CUDA dispatch).
# Kernel files: csrc/cpu/*.cpp always, csrc/cuda/*.cu with CUDA.
srcs = [s for s in sources("csrc/ops*.cpp") if not s.endswith("_cuda.cpp")] + sources("csrc/cpu/*.cpp")
include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]

if with_cuda:
    srcs += sources("csrc/ops*_cuda.cpp") + sources("csrc/cuda/*.cu")
    ext = cpp_extension.CUDAExtension(
        "fastvae._C", srcs, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx + ["-DFASTVAE_WITH_CUDA"],
                            "nvcc": ["-O3", "-std=c++17", "-lineinfo", "-DFASTVAE_WITH_CUDA"]},
        extra_link_args=["-fopenmp"])
else:
    ext = cpp_extension.CppExtension(
        "fastvae._C", srcs, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"])

setup(ext_modules=[ext], cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)})
