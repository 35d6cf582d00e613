"""The CLIP model: any open_clip name + pretrained tag or checkpoint path.

The default is the project's demo model (models/demo), loaded through the same call a real
checkpoint takes: `open_clip.create_model_and_transforms(name, pretrained=<path>)`. For real
crawls use ViT-B-32 / laion2b_s34b_b79k, the model LAION-5B was filtered with
(CLIPSIEVE_MODEL=ViT-B-32 CLIPSIEVE_PRETRAINED=laion2b_s34b_b79k).

`model_id` names the model and its weights in the lake and in asset versions, so two
models' outputs coexist and a model change makes exactly the dependent assets stale.
"""

import contextlib
import importlib.metadata
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from dagster import ConfigurableResource
from pydantic import Field

from resources.safe_weights import safe_pretrained
from resources.versions import cache_path, file_digest, text_digest, write_cache_file

# The demo model and heads ship in the repository (models/demo, made by models/train_demo.py).
DEMO_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"
DEMO_MODEL = "clipsieve-demo"
DEMO_CHECKPOINT = str(DEMO_DIR / f"{DEMO_MODEL}.safetensors")


@dataclass(frozen=True)
class LoadedClip:
    model: Any
    preprocess: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype  # of the pixels fed to the image tower
    precision: str = "fp32"  # open_clip's precision name; "amp*" runs under torch.autocast
    channels_last: bool = False


# Measured with bench/embed.py on 2 CPU cores (ViT-B-32): decoding the next batch while the
# model runs lost to decoding inline (13.5 vs 14.2 pairs/s), as it competes with torch's
# threads; decoding each batch in one thread per core while the model waits does not. On a
# GPU the CPU is free, so decoding ahead keeps the device busy.
GPU_DECODE_THREADS = 4


@dataclass(frozen=True)
class EmbedOptions:
    """How a shard is embedded; the defaults come from bench/embed.py on a 2-core CPU."""

    batch_size: int = 32
    decode_threads: int = 0  # threads decoding and preprocessing images (0: inline)
    trim_text: bool = True  # cut token sequences to the batch's longest caption
    decode_ahead: bool = False  # prepare the next batch while the model runs on this one


def model_calibration(checkpoint: str) -> dict:
    """The calibration.json beside a local checkpoint (its policy thresholds and preference
    rules on the model's similarity scale, as models/train_demo.py writes it), or {}."""
    calibration = Path(checkpoint).with_name("calibration.json")
    if not os.path.isfile(checkpoint) or not calibration.exists():
        return {}
    return json.loads(calibration.read_text())


def model_id(model_name: str, pretrained: str) -> str:
    """Filesystem-safe id of a model and its weights: name + tag, or name + file hash.

    A local checkpoint's hash covers the `<model_name>.json` config beside it too, when there
    is one (the network it describes): an edited config is another model, whose outputs must
    not share a lake folder or a code version with the old one's."""
    if pretrained and os.path.isfile(pretrained):
        digest = file_digest(pretrained)
        config = Path(pretrained).with_name(f"{model_name}.json")
        if config.is_file():
            digest = text_digest(digest + file_digest(str(config)))
        weights = f"{Path(pretrained).stem}-{digest}"
    else:
        weights = pretrained or "random"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model_name}__{weights}")


EMBEDDING_DIMS_CACHE = "embedding_dims.json"  # in the cache folder


def embedding_dim(model_name: str, pretrained: str) -> int | None:
    """The size of the model's embeddings from its open_clip config, without building the model
    (None for a model whose config open_clip does not ship, such as an hf-hub: name).

    A `<model_name>.json` beside a local checkpoint is read directly; open_clip's own configs
    are looked up once per open_clip version and kept in $CLIPSIEVE_CACHE_DIR, as importing
    open_clip takes 2-4 s and every process that loads the definitions needs the figure.
    """
    if pretrained and os.path.isfile(pretrained):
        config = Path(pretrained).with_name(f"{model_name}.json")
        if config.exists():
            return int(json.loads(config.read_text())["embed_dim"])
    return _configured_embedding_dim(model_name)


@lru_cache(maxsize=16)
def _configured_embedding_dim(model_name: str) -> int | None:
    key = f"{model_name}@open_clip_torch-{importlib.metadata.version('open_clip_torch')}"
    try:
        cache = json.loads(cache_path(EMBEDDING_DIMS_CACHE).read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    import open_clip

    config = open_clip.get_model_config(model_name)
    dim = int(config["embed_dim"]) if config and "embed_dim" in config else None
    write_cache_file(cache_path(EMBEDDING_DIMS_CACHE), lambda f: f.write(json.dumps({**cache, key: dim}).encode()))
    return dim


def _register_local_config(model_name: str, pretrained: str) -> None:
    """A `<model_name>.json` open_clip config beside a local checkpoint is registered by name."""
    import open_clip

    if model_name in open_clip.list_models() or not os.path.isfile(pretrained):
        return
    config = Path(pretrained).with_name(f"{model_name}.json")
    if not config.exists():
        raise ValueError(f"unknown open_clip model {model_name!r} and no {config.name} beside {pretrained}")
    open_clip.add_model_config(config)


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 math (AVX512-BF16 or AMX), where bf16 pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device_type: str, has_bf16: bool) -> str:
    """The open_clip precision `auto` stands for on this device; any other name as it is.

    auto: fp16 autocast (amp) on a GPU; bf16 weights on a CPU with native bf16 math
    (measured 1.7-2.5x fp32 with AVX512-BF16 and 3.3x with AMX, embeddings within cosine
    0.9999 of fp32); fp32 on other CPUs, where bf16 is emulated and slower than fp32.
    """
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "amp"
    return "bf16" if has_bf16 else "fp32"


# torch.nn.init's in-place initialisers, each returning its tensor.
_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
                 "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextlib.contextmanager
def weights_left_uninitialised() -> Iterator[None]:
    """Build modules without drawing random initial weights.

    For a model about to load a checkpoint the draws are wasted: 2 of the 3 s ViT-B-32
    takes to load on 2 cores. open_clip loads full checkpoints with strict=True, so every
    parameter and persistent buffer is then set from the file (a missing one fails the
    load). Not thread-safe: it swaps torch.nn.init's functions for the duration.
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INITIALISERS}
    try:
        for name in _INITIALISERS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


@lru_cache(maxsize=4)
def _load(model_name: str, pretrained: str, device: str, precision: str, channels_last: bool = False) -> LoadedClip:
    import open_clip

    _register_local_config(model_name, pretrained)
    torch_device = _pick_device(device)
    precision = resolve_precision(precision, torch_device.type, cpu_has_bf16())
    # Weights are untrusted: open_clip only gets safetensors for a local file (see safe_weights).
    with safe_pretrained(pretrained) as weights:
        # Numpy (big_vision) weights go through a loader that is not strict: keep the draws.
        strict = bool(weights) and not weights.lower().endswith((".npz", ".npy"))
        with weights_left_uninitialised() if strict else contextlib.nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=weights or None, device=torch_device, precision=precision,
                weights_only=True, require_pretrained=bool(weights),
            )
    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "pure_fp16": torch.float16,
             "pure_bf16": torch.bfloat16}.get(precision, torch.float32)
    return LoadedClip(model, preprocess, open_clip.get_tokenizer(model_name), torch_device, dtype, precision,
                      channels_last)


class ClipModelResource(ConfigurableResource):
    """The open_clip model that embeds images and captions."""

    model_name: str = Field(
        default_factory=lambda: os.environ.get("CLIPSIEVE_MODEL", DEMO_MODEL),
        description="open_clip model name, e.g. ViT-B-32 ($CLIPSIEVE_MODEL; default: the demo model).",
    )
    pretrained: str = Field(
        default_factory=lambda: os.environ.get("CLIPSIEVE_PRETRAINED", DEMO_CHECKPOINT),
        description="open_clip pretrained tag (e.g. laion2b_s34b_b79k) or a local checkpoint path "
        "($CLIPSIEVE_PRETRAINED).",
    )
    device: str = Field(default="auto", description="'auto' (CUDA when available, else CPU), 'cpu' or 'cuda'.")
    precision: str = Field(
        default_factory=lambda: os.environ.get("CLIPSIEVE_PRECISION", "auto"),
        description="open_clip precision ($CLIPSIEVE_PRECISION). auto (default): bf16 on CPUs with "
        "AVX512-BF16/AMX (weights converted once: 1.7-3.3x fp32, cosine >= 0.9999 to fp32), fp32 on other CPUs, "
        "amp on a GPU; each shard's metadata records what it ran. fp32: the same numbers on every worker, up "
        "to float rounding. "
        "amp_bf16 (autocast) pays only at large batches. The setting is part of the embeddings' code version.",
    )
    batch_size: int = Field(default=32, description="Images (and captions) per forward pass; 256+ on a GPU.")
    decode_threads: int = Field(
        default=-1, description="Threads decoding and preprocessing images. 0: inline; -1 (auto): one per "
        "core on a CPU, 4 on a GPU.",
    )
    decode_ahead: int = Field(
        default=-1, description="Prepare the next batch while the model runs on this one. 1: yes, 0: no; "
        "-1 (auto): on a GPU only (on a CPU the decode threads would compete with the model's).",
    )
    trim_text: bool = Field(
        default=True, description="Cut caption token sequences to the batch's longest caption instead of the "
        "model's full context (same embeddings, less compute).",
    )
    channels_last: bool = Field(default=False, description="Channels-last memory format for the image tower.")
    torch_threads: int = Field(default=0, description="torch intra-op threads (0: torch's default, one per core).")

    @property
    def model_id(self) -> str:
        return model_id(self.model_name, self.pretrained)

    @property
    def embedding_dim(self) -> int | None:
        return embedding_dim(self.model_name, self.pretrained)

    def load(self) -> LoadedClip:
        """The model, its eval transform and tokenizer; cached per process."""
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        return _load(self.model_name, self.pretrained, self.device, self.precision, self.channels_last)

    def embed_options(self) -> EmbedOptions:
        on_cpu = _pick_device(self.device).type == "cpu"
        threads = self.decode_threads
        if threads < 0:
            threads = torch.get_num_threads() if on_cpu else GPU_DECODE_THREADS  # torch's count of the cores
        ahead = not on_cpu if self.decode_ahead < 0 else bool(self.decode_ahead)
        return EmbedOptions(self.batch_size, threads, self.trim_text, ahead)
