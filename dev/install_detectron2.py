#!/usr/bin/env python
"""Install Detectron2 into the running Python environment.

Detectron2 has no official PyPI release. The official route is its git repository; when that is not
reachable, this script falls back to the PyPI sdist ``pb1-detectron2==0.6``, a byte-identical
copy of official Detectron2 v0.6's Python code, verified by sha256. That sdist ships without
``detectron2/layers/csrc``, so a minimal ``vision.cpp`` is supplied here: it binds only the
build-info functions, which is all DETA needs (the rotated-box ops and fast COCOeval then stay
unavailable, and DETA's evaluator falls back to pycocotools). v0.6 also needs ``Pillow<10`` and
``setuptools<80`` (for ``pkg_resources``); those pins are applied on that route only.

Usage: ``python dev/install_detectron2.py [--source auto|git|pypi|PATH]``.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile

GIT_URL = "https://github.com/facebookresearch/detectron2.git"
SDIST = "pb1-detectron2==0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
V06_PINS = ["Pillow<10", "setuptools<80"]

# Written by us: binds only what detectron2.utils.collect_env asks of detectron2._C.
MINIMAL_VISION_CPP = r"""
#include <torch/extension.h>

namespace {
std::string compiler_version() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return "GCC " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__);
#else
  return "unknown";
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("get_compiler_version", &compiler_version, "compiler that built this module");
  m.def("get_cuda_version", []() { return std::string("not built with CUDA"); });
  m.def("has_cuda", []() { return false; });
}
"""


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def installed_version() -> str | None:
    code = "import detectron2, sys; sys.stdout.write(detectron2.__version__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


def git_reachable(timeout: float = 20.0) -> bool:
    try:
        res = subprocess.run(
            ["git", "ls-remote", "--heads", GIT_URL],
            capture_output=True,
            timeout=timeout,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def install_from_source(src: str) -> None:
    # --no-build-isolation: detectron2's setup.py imports the torch it must be built against.
    pip("install", "--no-build-isolation", src)


def sha256(file: str) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def install_from_pypi_sdist() -> None:
    pip("install", *V06_PINS)
    with tempfile.TemporaryDirectory() as tmp:
        # Download without building: --no-build-isolation lets pip read the metadata with our torch.
        pip(
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-build-isolation",
            "-d",
            tmp,
            SDIST,
        )
        archives = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
        if len(archives) != 1:
            sys.exit(f"install_detectron2: expected one sdist in {tmp}, found {archives}")
        archive = os.path.join(tmp, archives[0])
        digest = sha256(archive)
        if digest != SDIST_SHA256:
            sys.exit(
                f"install_detectron2: {archives[0]} has sha256 {digest}, expected {SDIST_SHA256}; "
                "refusing to install an unverified Detectron2"
            )
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        root = os.path.join(tmp, archives[0][: -len(".tar.gz")])
        csrc = os.path.join(root, "detectron2", "layers", "csrc")
        os.makedirs(csrc, exist_ok=True)
        with open(os.path.join(csrc, "vision.cpp"), "w") as f:
            f.write(MINIMAL_VISION_CPP)
        env_cuda = os.environ.pop("FORCE_CUDA", None)  # the minimal module has no CUDA sources
        try:
            install_from_source(root)
        finally:
            if env_cuda is not None:
                os.environ["FORCE_CUDA"] = env_cuda


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        default=os.getenv("DETECTRON2_SOURCE", "auto"),
        help="auto (git if reachable, else PyPI sdist), git, pypi, or a local checkout path",
    )
    parser.add_argument("--force", action="store_true", help="reinstall even if importable")
    args = parser.parse_args()

    version = installed_version()
    if version and not args.force:
        print(f"install_detectron2: detectron2 {version} already installed")
        return
    if args.source not in ("auto", "git", "pypi"):
        if not os.path.isdir(args.source):
            sys.exit(f"install_detectron2: --source {args.source!r} is not a directory")
        install_from_source(args.source)
    elif args.source == "git" or (args.source == "auto" and git_reachable()):
        install_from_source(f"git+{GIT_URL}")
    else:
        print("install_detectron2: git source unreachable; using the verified PyPI sdist", SDIST)
        install_from_pypi_sdist()
    print(f"install_detectron2: detectron2 {installed_version()} installed")


if __name__ == "__main__":
    main()
