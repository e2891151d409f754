"""Build mxmoe._C (csrc/, C11 + NumPy C API + GLPK) and, when nvcc is found, mxmoe._cuda (cuda/).

Environment knobs (all optional):
  MXMOE_GLPK_PREFIX   a prefix holding include/glpk.h and lib/ (or lib/x86_64-linux-gnu/) with libglpk.so,
                      e.g. Debian packages unpacked with `dpkg -x`; the library path is baked in as an rpath.
  MXMOE_NO_CUDA=1     skip mxmoe._cuda even when nvcc exists.
  MXMOE_CUDA_ARCHS    semicolon list of nvcc -gencode pairs' targets, default "90a;80;89" (first = sm_90a).
  NVCC                the nvcc to use (default: `nvcc` on PATH, then $CUDA_HOME/bin/nvcc).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
C_FLAGS = ["-std=c11", "-O3", "-fopenmp", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter",
           "-Wno-missing-field-initializers", "-D_GNU_SOURCE"]


def glpk_dirs() -> tuple[list[str], list[str]]:
    prefix = os.environ.get("MXMOE_GLPK_PREFIX")
    if not prefix:
        return [], []
    prefix = os.path.abspath(prefix)
    include = [d for d in (os.path.join(prefix, "usr/include"), os.path.join(prefix, "include"))
               if os.path.exists(os.path.join(d, "glpk.h"))]
    libs = [d for d in (os.path.join(prefix, "usr/lib/x86_64-linux-gnu"), os.path.join(prefix, "lib"),
                        os.path.join(prefix, "usr/lib")) if os.path.isdir(d)]
    return include, libs


def find_nvcc() -> str | None:
    candidates = [os.environ.get("NVCC"), shutil.which("nvcc")]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidates.append(os.path.join(cuda_home, "bin", "nvcc"))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def find_cuda_home(nvcc: str) -> str:
    """The toolkit root holding include/cuda_runtime.h (nvcc on the PATH may be a wrapper script elsewhere)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "include", "cuda_runtime.h")):
            return c
    raise RuntimeError(f"nvcc found at {nvcc} but no CUDA toolkit with include/cuda_runtime.h; set CUDA_HOME")


class BuildExt(build_ext):
    """Compiles cuda/*.cu with nvcc before linking mxmoe._cuda; records why _cuda is absent when it is."""

    def build_extensions(self):
        self.build_info = {"cuda_built": False, "cuda_reason": ""}
        self.nvcc = find_nvcc()
        skip_reason = ""
        if os.environ.get("MXMOE_NO_CUDA") == "1":
            skip_reason = "MXMOE_NO_CUDA=1 was set when mxmoe was built"
        elif self.nvcc is None:
            skip_reason = "nvcc was not found when mxmoe was built (install the CUDA Toolkit, then reinstall mxmoe)"
        if skip_reason:
            # Drop the extension itself: setuptools would otherwise try to copy a library that was never built.
            self.extensions = [e for e in self.extensions if e.name != "mxmoe._cuda"]
            self.build_info["cuda_reason"] = skip_reason
        super().build_extensions()
        self._write_build_info()

    def build_extension(self, ext):
        if ext.name != "mxmoe._cuda":
            return super().build_extension(ext)
        nvcc = self.nvcc
        archs = os.environ.get("MXMOE_CUDA_ARCHS", "90a;80;89").split(";")
        gencode = []
        for arch in filter(None, archs):
            gencode += [f"-gencode=arch=compute_{arch},code=sm_{arch}"]
        build_tmp = os.path.join(self.build_temp, "cuda")
        os.makedirs(build_tmp, exist_ok=True)
        objects = []
        cuda_home = find_cuda_home(nvcc)
        for source in sorted(glob.glob(os.path.join(ROOT, "cuda", "*.cu"))):
            obj = os.path.join(build_tmp, os.path.basename(source) + ".o")
            dependencies = [source] + [p for pattern in ("cuda/*.cuh", "cuda/*.h", "csrc/*.h")
                                       for p in glob.glob(os.path.join(ROOT, pattern))]
            if not (os.path.exists(obj) and os.path.getmtime(obj) >= max(map(os.path.getmtime, dependencies))):
                cmd = [nvcc, "-c", source, "-o", obj, "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                       "-Xcompiler", "-fvisibility=hidden", "--expt-relaxed-constexpr", "-lineinfo",
                       f"--threads={min(len(archs), os.cpu_count() or 1)}",
                       f"-I{os.path.join(ROOT, 'csrc')}", f"-I{os.path.join(ROOT, 'cuda')}"] + gencode
                print(" ".join(cmd), flush=True)
                subprocess.check_call(cmd)
            objects.append(obj)
        ext.extra_objects = objects
        lib_dirs = [os.path.join(cuda_home, d) for d in ("lib64", "lib", "targets/x86_64-linux/lib")]
        ext.library_dirs = [d for d in lib_dirs if os.path.isdir(d)]
        ext.libraries = ["cudart_static", "rt", "dl", "pthread", "stdc++"]
        ext.include_dirs = ext.include_dirs + [os.path.join(cuda_home, "include")]
        super().build_extension(ext)
        self.build_info["cuda_built"] = True
        self.build_info["cuda_archs"] = archs
        self.build_info["nvcc"] = nvcc

    def _write_build_info(self):
        # Written beside the sources too: editable installs import mxmoe from the checkout, not from build_lib.
        targets = {os.path.join(ROOT, "mxmoe"), os.path.join(os.path.abspath(self.build_lib), "mxmoe")}
        for target_dir in targets:
            os.makedirs(target_dir, exist_ok=True)
            path = os.path.join(target_dir, "_build_info.json")
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.build_info, f)
            os.replace(tmp, path)


glpk_include, glpk_lib = glpk_dirs()
c_sources = sorted(p for p in glob.glob("csrc/*.c"))
extensions = [
    Extension(
        "mxmoe._C",
        sources=c_sources,
        include_dirs=[numpy.get_include(), "csrc"] + glpk_include,
        library_dirs=glpk_lib,
        runtime_library_dirs=glpk_lib,
        libraries=["glpk", "m"],
        extra_compile_args=C_FLAGS,
        extra_link_args=["-fopenmp"],
    ),
]
if glob.glob("cuda/*.cu"):
    extensions.append(Extension(
        "mxmoe._cuda",
        sources=sorted(glob.glob("cuda/*_py.c")),
        include_dirs=["csrc", "cuda"],
        extra_compile_args=["-std=c11", "-O2", "-fvisibility=hidden", "-Wall"],
    ))

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
