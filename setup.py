"""Build of fastvae._C: CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Environment switches:
  FASTVAE_CUDA=1   require the CUDA build (fail if torch or nvcc cannot do it)
  FASTVAE_CUDA=0   CPU only, even where CUDA is available
  TORCH_CUDA_ARCH_LIST  GPU architectures (default: the visible GPU's, else "9.0")
  MAX_JOBS         parallel compile jobs (ninja)

The sources are found by their place (a new op family is new files: docs/add-a-family.md), into the lists below;
`python -c "import setup; print(*setup.CUDA_KERNELS)"` is how the Makefile's cuda-check reads them.
"""
import glob
import os
import shutil
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    """The files of `pattern`, relative to the checkout, sorted (not in the order of the directory)."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# The torch binding (csrc/torch): the Python module, and per family (csrc/torch/<family>/) its schemas and its CPU
# backend (the backend-generic ops are headers), and any C++ autograd nodes of its own.
BINDING = (["csrc/torch/module.cpp"] + sources("csrc/torch/*/schema.cpp") + sources("csrc/torch/*/cpu.cpp")
           + sources("csrc/torch/*/autograd.cpp"))
# The CPU kernel files, each compiled once per instruction set of CPU_ISAS (-DFV_ISA=<name>, see csrc/cpu/isa.h)
# into objects of their own (each registers its own tables), and the one run-time choice between them.
CPU_DISPATCH = ["csrc/cpu/isa.cpp"]
CPU_KERNELS = [s for s in sources("csrc/cpu/*.cpp") if s not in CPU_DISPATCH]
CPU_ISAS = ["avx512", "avx2", "baseline"]
# With CUDA: the CUDA backends of the binding, and the kernels with their launchers.
CUDA_BINDING = sources("csrc/torch/*/cuda.cpp")
CUDA_KERNELS = sources("csrc/cuda/*.cu")
INCLUDE_DIRS = ["csrc/include", "csrc"]
CXX_FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]


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


class BuildExt(cpp_extension.BuildExtension):
    """torch's build, plus the per-instruction-set objects of CPU_KERNELS (the same source compiled once per ISA,
    as ATen builds its CPU kernels), linked in as extra objects.

    Every build, editable or wheel, keeps its objects in one folder, build/obj, and compiles them through torch's
    ninja (header dependencies included), so a second build (`pip wheel .` after `pip install -e .`) recompiles
    only what changed, and then always relinks (force: distutils' own up-to-date test knows no headers)."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, "build", "obj")
        self.force = True

    def build_extension(self, ext):
        # here self.compiler.compile is torch's ninja compile (set by BuildExtension.build_extensions)
        def compile_one(job):
            src, isa = job
            return self.compiler.compile(
                [src], output_dir=os.path.join(self.build_temp, "isa", isa, os.path.basename(src)),
                macros=[("FV_ISA", isa)], include_dirs=[os.path.join(ROOT, d) for d in INCLUDE_DIRS],
                extra_postargs=CXX_FLAGS)

        jobs = [(src, isa) for isa in CPU_ISAS for src in CPU_KERNELS]
        with ThreadPoolExecutor(max(1, int(os.environ.get("MAX_JOBS", "2")))) as pool:
            objects = [o for objs in pool.map(compile_one, jobs) for o in objs]
        ext.extra_objects = [o for o in ext.extra_objects or [] if o not in objects] + objects
        super().build_extension(ext)


def extension(with_cuda):
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
    defines = [f'-DFASTVAE_TORCH_VERSION="{torch.__version__}"', f'-DFASTVAE_CUDA_ARCHS="{archs}"']
    cxx = CXX_FLAGS + defines
    srcs = BINDING + CPU_DISPATCH
    include_dirs = [os.path.join(ROOT, d) for d in INCLUDE_DIRS]
    if with_cuda:
        return cpp_extension.CUDAExtension(
            "fastvae._C", srcs + CUDA_BINDING + CUDA_KERNELS, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DFASTVAE_WITH_CUDA"],
                                "nvcc": ["-O3", "-std=c++17", "-lineinfo", "-DFASTVAE_WITH_CUDA"]},
            extra_link_args=["-fopenmp"])
    return cpp_extension.CppExtension("fastvae._C", srcs, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                                      extra_link_args=["-fopenmp"])

if __name__ == "__main__":
    # torch runs the `ninja` it finds on PATH: the one installed beside this Python (pip's ninja) goes first, so that
    # every build of the checkout (editable, wheel, build_ext) uses one ninja, whose log build/obj keeps
    bindir = sysconfig.get_path("scripts")
    if os.path.isfile(os.path.join(bindir, "ninja")):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    with_cuda = want_cuda()
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    setup(ext_modules=[extension(with_cuda)], cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)})
