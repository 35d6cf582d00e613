"""Image bytes to the model's input batches, for the embeddings stage.

open_clip's eval transform is Resize, CenterCrop, RGB conversion, ToTensor, Normalize,
applied image by image. Here it is split at ToTensor: the PIL part (decode, resize, crop)
runs per image, in threads (PIL and numpy release the GIL), and ToTensor + Normalize become
a table of what those float operations give for each 8-bit value, looked up per image in the
same thread and already in the dtype the model takes (bf16 where it runs bf16). So the batch
is bit-for-bit the per-image transform's, cast as the model casts it
(tests/test_embeddings.py). Measured on 2 cores for ViT-B-32: 1.8 ms an image per image,
about 0.9 ms split and threaded with the look-up once per batch in float32 (0.77 ms of it
the look-up and the cast to bf16 after it), and the look-up per image into bf16 0.21 ms.
A transform of another shape runs image by image, as it is.
"""

import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from assets.crawl.images import as_mode, image_error_text, open_image

# torchvision's and open_clip's centre crops: their output has the crop's size whatever the input.
CENTRE_CROPS = ("CenterCrop", "CenterCropOrPad")


@dataclass(frozen=True)
class SplitTransform:
    """A transform as a per-image part and a per-batch stacking."""

    # PIL image -> (3, h, w) numpy array in `dtype` (split), or a finished float32 tensor (not)
    per_image: Callable[[Image.Image], Any]
    # (3, 256): ToTensor + Normalize of each 8-bit value, per channel, in `dtype` (bf16 as its
    # int16 bits, as numpy has no bf16); None: per_image gives finished tensors.
    table: np.ndarray | None
    dtype: torch.dtype = torch.float32  # of the batches; a transform that is not split gives float32

    @property
    def batched(self) -> bool:
        return self.table is not None

    def batch(self, items: list[Any]) -> torch.Tensor:
        """Stack what per_image gave into one (n, 3, h, w) batch."""
        if self.table is None:
            return torch.stack(items)
        batch = torch.from_numpy(np.stack(items))
        return batch.view(torch.bfloat16) if self.dtype == torch.bfloat16 else batch


def normalize_table(mean: Any, std: Any) -> np.ndarray:
    """ToTensor + Normalize of the values 0..255 per channel, as the same float32 operations
    in the same order (to float, / 255, - mean, / std): so each entry is bit-for-bit what the
    per-image transform computes for that value."""
    mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1)
    values = torch.arange(256, dtype=torch.uint8).expand(mean.shape[0], 256)
    return values.float().div(255).sub_(mean).div_(std).numpy()


def cast_table(table: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The float32 table rounded to `dtype` as the model's cast of the batch would round each
    value; bf16 as its int16 bits."""
    cast = torch.from_numpy(table).to(dtype)
    return cast.view(torch.int16).numpy() if dtype == torch.bfloat16 else cast.numpy()


def split_transform(preprocess: Callable, dtype: torch.dtype = torch.float32) -> SplitTransform:
    """Split open_clip's eval transform at ToTensor when a centre crop comes before it (every
    image then has one size) and Normalize alone after it; any other transform stays whole.
    A split transform gives batches in `dtype` (float32, float16 or bfloat16)."""
    from torchvision import transforms  # here: importing torchvision costs seconds

    if not isinstance(preprocess, transforms.Compose):
        return SplitTransform(preprocess, None)
    steps = preprocess.transforms
    cut = next((i for i, step in enumerate(steps) if isinstance(step, transforms.ToTensor)), None)
    if cut is None or not any(type(step).__name__ in CENTRE_CROPS for step in steps[:cut]):
        return SplitTransform(preprocess, None)
    rest = steps[cut + 1:]
    if len(rest) != 1 or not isinstance(rest[0], transforms.Normalize):
        return SplitTransform(preprocess, None)
    pil_steps = transforms.Compose(steps[:cut])
    table = normalize_table(rest[0].mean, rest[0].std)
    if table.shape != (3, 256):
        return SplitTransform(preprocess, None)
    table = cast_table(table, dtype)

    def per_image(image: Image.Image) -> np.ndarray:
        image = pil_steps(image)
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            raise ValueError(f"expected an RGB image before ToTensor, got {type(image).__name__} "
                             f"{getattr(image, 'mode', '')}")
        pixels = np.asarray(image)  # (h, w, 3) uint8
        # A pixel has 256 values per channel, so ToTensor + Normalize is one gather per channel
        # (HWC in, CHW out), written straight in the model's dtype.
        out = np.empty((3, *pixels.shape[:2]), table.dtype)
        for channel in range(3):
            np.take(table[channel], pixels[..., channel], out=out[channel])
        return out

    return SplitTransform(per_image, table, dtype)


def decode(data: bytes, size: int) -> Image.Image:
    """The image as RGB (assets/crawl/images.py: format and cost checks, EXIF orientation, alpha on
    white, 16-bit scaled); a JPEG is downscaled while decoding, to no less than twice `size`."""
    image = open_image(data)
    # JPEG: let the decoder downscale by a power of two (far cheaper than a full decode), but
    # only to twice the model's input, so the bicubic resize after it still sees the detail
    # it would have (measured: cosine >= 0.995 to a full decode on the 64 px demo model, and
    # no change at all for 224 px models on img2dataset's 256 px images).
    image.draft("RGB", (2 * size, 2 * size))
    return as_mode(image, "RGB")


Batch = tuple[list[str], torch.Tensor | None, list[tuple[str, str]]]  # keys, pixels, failures (key, error)


def pixel_batches(preprocess: Callable, input_size: int, images: Iterable[tuple[str, bytes]], batch_size: int,
                  threads: int = 0, ahead: bool = False, dtype: torch.dtype = torch.float32) -> Iterator[Batch]:
    """(keys, pixels, failures) per batch of `batch_size` (key, image bytes) pairs; pixels in
    `dtype` when the transform splits, else float32.

    `threads` > 0 decode and preprocess a batch's images in that many threads. With
    `ahead`, the next batch is prepared while the caller runs the model on this one (for a
    GPU); without, a batch is prepared while the caller waits, so on a CPU the threads never
    compete with the model's own.
    """
    split = split_transform(preprocess, dtype)

    def prepare(item: tuple[str, bytes]) -> tuple[str, Any, str | None]:
        key, data = item
        try:
            return key, split.per_image(decode(data, input_size)), None
        except Exception as error:  # noqa: BLE001 - a bad image is recorded, not fatal
            return key, None, image_error_text(error)

    def collect(prepared: Iterable[tuple[str, Any, str | None]]) -> Batch:
        keys, items, failures = [], [], []
        for key, item, error in prepared:
            if item is None:
                failures.append((key, error))
            else:
                keys.append(key)
                items.append(item)
        return keys, split.batch(items) if items else None, failures

    iterator = iter(images)
    chunks = iter(lambda: list(itertools.islice(iterator, batch_size)), [])
    if threads <= 0:
        for chunk in chunks:
            yield collect(map(prepare, chunk))
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        if not ahead:
            for chunk in chunks:
                yield collect(pool.map(prepare, chunk))
            return
        pending = None
        for chunk in chunks:
            submitted = [pool.submit(prepare, item) for item in chunk]
            if pending is not None:
                yield collect(f.result() for f in pending)
            pending = submitted
        if pending is not None:
            yield collect(f.result() for f in pending)
