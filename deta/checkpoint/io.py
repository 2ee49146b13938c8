"""The one atomic file writer and the one weights-only checkpoint loader of the project."""

import argparse
import contextlib
import os
import pickle
import tempfile
from typing import Any, Callable

import torch

__all__ = ["load_weights_only", "save_atomic", "write_atomic", "write_text_atomic"]

# Non-container classes allowed in loaded checkpoints (the official releases pickle ``args``).
SAFE_GLOBALS = [argparse.Namespace]


def write_atomic(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` for a temporary file in ``path``'s folder, then rename it to
    ``path``: a crash or kill at any point leaves either the old file or the complete new one,
    never half of it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`write_atomic`)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    write_atomic(path, write)


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp), suffix=".pth")


def load_weights_only(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, also allowing ``argparse.Namespace``.

    Checkpoints of this project (model, optimizer, scheduler, iteration) are plain containers of
    tensors and numbers; the official DETA releases add an ``argparse.Namespace`` under ``args``.
    Anything else is refused with a message saying how to re-save a trusted file.
    """
    # torch < 2.5 has no safe_globals context; its weights_only then rejects only Namespace.
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        with safe(SAFE_GLOBALS) if safe else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(
            f"{path} holds Python objects beyond tensors, numbers and containers, so it is not "
            "loaded with torch.load(weights_only=True). Checkpoints written by this project "
            "never do. If you trust the file, re-save its weights with "
            "torch.save({'model': torch.load(path, weights_only=False)['model']}, new_path)."
            f" Original error: {e}"
        ) from e
