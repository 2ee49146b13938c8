"""The one atomic file writer and the one weights-only checkpoint loader of the project."""

import argparse
import contextlib
import os
import pickle
import tempfile
import zipfile
from typing import Any, Callable

import torch

__all__ = [
    "CheckpointError",
    "describe_load_failure",
    "load_weights_only",
    "save_atomic",
    "write_atomic",
    "write_text_atomic",
]

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


class CheckpointError(ValueError):
    """A weights file that is missing or cannot be loaded safely; the message is one line that
    names the file and says what is wrong with it."""


def describe_load_failure(path: str, e: BaseException) -> str:
    """What is wrong with a file that ``torch.load(weights_only=True)`` refused, judged from its
    first bytes.

    torch's messages cannot be relied on for this (garbage and disallowed objects both read as
    "Weights only load failed"), and they advise ``weights_only=False``, which would run arbitrary
    code from a file that may merely be broken.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:  # a URL, or gone meanwhile
        head = None
    if head == b"" or isinstance(e, EOFError):
        return "is empty or truncated"
    if head is not None and head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        if not zipfile.is_zipfile(path):
            return "is truncated or corrupt (an incomplete torch.save archive)"
        if isinstance(e, pickle.UnpicklingError):
            return (
                "holds Python objects besides tensors, numbers and containers, which are not "
                "loaded (that could run code from the file); re-save only its weights with "
                "torch.save({'model': state_dict}, path)"
            )
    elif head is not None and head[:1] == b"\x80":  # a pickle: old torch.save, Detectron2 .pkl
        if isinstance(e, pickle.UnpicklingError):
            return (
                "is a pickle that cannot be loaded safely: it is corrupt, or holds Python objects "
                "besides tensors, numbers and containers; re-save only its weights with "
                "torch.save({'model': state_dict}, path)"
            )
    elif head is not None:
        return "is not a PyTorch checkpoint (corrupt, or another file format)"
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not first_line or "weights_only" in first_line:
        return f"cannot be loaded ({type(e).__name__}); it is corrupt or not a checkpoint"
    return f"cannot be loaded ({type(e).__name__}: {first_line})"


def load_weights_only(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, also allowing ``argparse.Namespace``.

    Checkpoints of this project (model, optimizer, scheduler, iteration) are plain containers of
    tensors and numbers; the official DETA releases add an ``argparse.Namespace`` under ``args``.

    Raises:
        CheckpointError: no such file, or one that is corrupt or holds other objects (one line
            naming the file; never the advice to load it unsafely).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    # torch < 2.5 has no safe_globals context; its weights_only then rejects only Namespace.
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        with safe(SAFE_GLOBALS) if safe else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch, pickle and zipfile raise many types for one broken file
        # from None: the chained torch error would again suggest weights_only=False.
        raise CheckpointError(f"{path} {describe_load_failure(path, e)}") from None
