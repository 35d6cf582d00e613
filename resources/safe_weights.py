"""Load model and head weights without running code from the file.

A `.pt` / `.bin` / `.pth` checkpoint is a pickle, and unpickling can call any function
(`__reduce__` -> `os.system`). Weights here come from outside the project (a path in
$CLIPSIEVE_PRETRAINED, a head someone mailed us), so:

- safetensors files are read as they are (a JSON header and raw tensors: nothing runs);
- any other local checkpoint is read with `torch.load(weights_only=True)`, whose unpickler
  only rebuilds tensors and plain containers and refuses every other global, and is then
  rewritten as a temporary safetensors file. open_clip is only ever handed safetensors for
  a local file, so its own loader (and its `except TypeError: torch.load(...)` fallback
  without weights_only) never sees the pickle, and the file cannot change between our
  check and its load;
- numpy checkpoints (.npz / .npy, big_vision SigLIP weights) go to open_clip unchanged
  once `np.load(allow_pickle=False)` opens them: open_clip reads them with `np.load`,
  whose allow_pickle is False by default too;
- a pretrained *tag* is downloaded by open_clip, which prefers the hub's safetensors file
  and loads anything else with `weights_only`; `load_clip_weights` passes
  `weights_only=True` explicitly so that does not rest on a default.
"""

import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

SAFETENSORS = ".safetensors"
NUMPY_SUFFIXES = (".npz", ".npy")


class UnsafeWeightsError(ValueError):
    """A weights file that could only be loaded by running code from it, or is not weights."""


def check_safetensors(path: str | Path, what: str = "weights") -> None:
    """Raise UnsafeWeightsError naming `path` unless it parses as a safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as error:
        raise UnsafeWeightsError(f"refusing {what} {path}: not a valid safetensors file: {error}") from None


def load_safetensors(path: str | Path, what: str = "weights") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; anything else is refused, naming the file."""
    path = Path(path)
    if path.suffix != SAFETENSORS:
        raise UnsafeWeightsError(f"refusing {what} {path}: it must be a {SAFETENSORS} file (pickles can run code)")
    check_safetensors(path, what)
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    return load_file(str(path)), metadata


def check_numpy(path: str | Path, what: str = "checkpoint") -> None:
    """Raise UnsafeWeightsError naming `path` unless it is .npy arrays of plain dtypes."""
    try:
        if Path(path).suffix.lower() == ".npz":
            # A torch.save file is a zip too: every entry must be an .npy array without objects.
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if not names:
                    raise ValueError("the archive holds no arrays")
                for name in names:
                    if not name.endswith(".npy"):
                        raise ValueError(f"entry {name!r} is not an .npy array")
                    with archive.open(name) as entry:
                        _check_npy_header(entry)
        else:
            np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise UnsafeWeightsError(f"refusing {what} {path}: not plain numpy arrays: {error}") from None


def _check_npy_header(entry: IO[bytes]) -> None:
    version = np.lib.format.read_magic(entry)
    if version == (1, 0):
        dtype = np.lib.format.read_array_header_1_0(entry)[2]
    elif version == (2, 0):
        dtype = np.lib.format.read_array_header_2_0(entry)[2]
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if dtype.hasobject:
        raise ValueError("an array of Python objects (stored as pickles)")


def load_state_dict(path: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, read without executing anything stored in it.

    safetensors as is; anything else must load with torch.load(weights_only=True) and be a
    mapping of names to tensors (or {"state_dict": that}, as training scripts save it).
    """
    path = Path(path)
    if path.suffix == SAFETENSORS:
        return load_safetensors(path, what)[0]
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for a forbidden global; anything else is not weights either
        raise UnsafeWeightsError(
            f"refusing {what} {path}: it is not a {SAFETENSORS} file and torch.load(weights_only=True) "
            f"rejects it (a pickle that would run code, or not a checkpoint): {_reason(error)}"
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded:
        raise UnsafeWeightsError(f"refusing {what} {path}: expected a state dict of tensors, "
                                 f"got {type(loaded).__name__}")
    not_tensors = sorted(str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise UnsafeWeightsError(f"refusing {what} {path}: entries that are not tensors: {not_tensors[:5]}")
    return loaded


def _reason(error: Exception) -> str:
    """The line of torch's message that says what was refused (it also suggests retrying
    with weights_only=False, which is exactly what must not be done here)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    specific = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (specific or lines or [type(error).__name__])[0]


def _save_as_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    # safetensors refuses tensors that share memory (tied weights); give each its own copy.
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        pointer = tensor.untyped_storage().data_ptr()
        tensors[name] = (tensor.clone() if pointer in seen else tensor).contiguous()
        seen.add(pointer)
    save_file(tensors, str(path))


@contextmanager
def safe_pretrained(pretrained: str) -> Iterator[str]:
    """What to pass open_clip as `pretrained`: a tag unchanged, a safetensors or numpy file
    unchanged (checked), any other local file rewritten as a temporary safetensors file."""
    if not pretrained or not os.path.isfile(pretrained):
        yield pretrained
        return
    path = Path(pretrained)
    if path.suffix.lower() in NUMPY_SUFFIXES:
        check_numpy(path)
        yield pretrained
        return
    if path.suffix == SAFETENSORS:
        check_safetensors(path, "checkpoint")
        yield pretrained
        return
    state = load_state_dict(path)
    with tempfile.TemporaryDirectory(prefix="clipsieve-weights-") as folder:
        converted = Path(folder) / f"{path.stem}{SAFETENSORS}"
        _save_as_safetensors(state, converted)
        del state
        yield str(converted)
