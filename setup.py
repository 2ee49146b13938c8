#!/usr/bin/env python
"""Build and install ``deta`` and its compiled multi-scale deformable attention op ``deta._C``.

The C++ CPU kernel is always built. The CUDA kernels are added when a GPU and a toolkit are visible,
or when ``FORCE_CUDA=1`` (build boxes without a GPU; then also set ``TORCH_CUDA_ARCH_LIST`` and
point ``CUDA_HOME`` at the toolkit root, the folder that holds ``lib64/``). Install with
``pip install --no-build-isolation -e .`` so the extension is compiled against the torch that
runs it.
"""

import glob
import os
import re
import shutil
from os import path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = path.dirname(path.abspath(__file__))
CSRC = path.join(HERE, "deta", "layers", "csrc")


def get_version() -> str:
    with open(path.join(HERE, "deta", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def want_cuda() -> bool:
    if os.getenv("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def copy_configs() -> None:
    """Copy ``configs/`` into the package (``deta/model_zoo/configs``), as package data.

    A wheel or non-editable install then has them; a source checkout reads ``configs/`` itself.
    """
    src = path.join(HERE, "configs")
    if not path.isdir(src):  # building from an sdist: the copy is already in the package
        return
    dst = path.join(HERE, "deta", "model_zoo", "configs")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.pyc", "__pycache__"))


def get_extensions():
    sources = [path.join(CSRC, "vision.cpp")] + sorted(glob.glob(path.join(CSRC, "*", "*.cpp")))
    # OpenMP backs at::parallel_for in the CPU kernel; -O3 matters for the inner bilinear loops.
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    extra_link_args = ["-fopenmp"]
    define_macros = []
    extension = CppExtension
    if want_cuda():
        extension = CUDAExtension
        sources += sorted(
            glob.glob(path.join(CSRC, "*.cu")) + glob.glob(path.join(CSRC, "*", "*.cu"))
        )
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = [
            "-O3",
            "-DCUDA_HAS_FP16=1",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
        ] + os.getenv("NVCC_FLAGS", "").split()
        print(f"deta: building deta._C with CUDA (CUDA_HOME={CUDA_HOME})")
    else:
        print("deta: building deta._C for CPU only (set FORCE_CUDA=1 to add the CUDA kernels)")
    return [
        extension(
            "deta._C",
            sources,
            include_dirs=[CSRC],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


copy_configs()
setup(
    name="deta",
    version=get_version(),
    description="DETA (NMS Strikes Back) as a Detectron2 plugin",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(exclude=("configs", "tests*", "tools", "dev")),
    package_data={"deta.model_zoo": ["configs/*.yaml", "configs/*/*.yaml"]},
    install_requires=["scipy", "pycocotools", "timm", "matplotlib"],
    extras_require={
        "dev": ["pytest==8.3.4", "ruff==0.8.4"],
        # tools/deploy: ONNX export (onnxscript) and ONNX Runtime; never imported by `import deta`.
        "export": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.3"],
    },
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
