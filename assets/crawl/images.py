"""Reading crawl images: which formats are opened, how much work one may cost, and how its
pixels become the RGB (or greyscale) every stage reads.

Crawl bytes are untrusted. Pillow would otherwise pick a decoder by content among dozens,
some of which hand the bytes to an external interpreter (EPS goes to Ghostscript), so
crawl images are opened only as the formats img2dataset writes (`encode_format` jpg, png
or webp): JPEG, PNG and WebP. Anything else is refused with its format named.

Decoding work is bounded before the decoder runs: the pixel count from the header
(Pillow's bomb limit), the aspect ratio (a 1 x 150,000 PNG would become a 224 x 33.6M
image under the model's shortest-side resize), and for a JPEG the number of scans (a
progressive JPEG repeating its last scan 1,000 times decodes every one of them, minutes
per image; encoders write about ten) and scans times pixels. What no header foresees is
caught by a per-image time budget where images are first checked (assets/crawl/image_worker.py).

Pixels, as img2dataset prepares them: the EXIF orientation applied, transparency
composited on white, 16-bit greyscale scaled to 8 bits (not clipped to white).
"""

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

# What img2dataset writes; Pillow's format names.
FORMATS = ("JPEG", "PNG", "WEBP")
# Pillow's default Image.MAX_IMAGE_PIXELS, enforced here whatever the global is set to.
MAX_IMAGE_PIXELS = 89_478_485
MAX_IMAGE_BYTES = 64 * 2**20
# Longest side over shortest side. DataComp keeps <= 3; past this the shortest-side resize
# alone costs more than the model's forward.
MAX_ASPECT_RATIO = 100
# Start-of-scan markers in a JPEG: baseline has 1 (3 when not interleaved), libjpeg's and
# mozjpeg's progressive scripts about 10.
MAX_JPEG_SCANS = 100
# A progressive JPEG's decode costs about a nanosecond per pixel per scan whatever the
# downscaling (measured: 8000x8000 with 100 scans, 6.5 s a decode): scans x pixels is the
# work bound, about 2 s here. 10 scans at the pixel limit is 0.9e9.
MAX_JPEG_SCAN_PIXELS = 2_000_000_000
# Other formats' signatures, to name what was refused.
_SIGNATURES = ((b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"II*\x00", "TIFF"),
               (b"MM\x00*", "TIFF"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"%PDF", "PDF"),
               (b"\x00\x00\x01\x00", "ICO"), (b"8BPS", "PSD"), (b"<", "text/HTML"))


_BUFFER = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class ImageRefused(ValueError):
    """Crawl bytes that are not read: the message says why."""


def _format_name(data: bytes) -> str:
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return "an unknown format"


def open_image(data: bytes) -> Image.Image:
    """The image, opened lazily (nothing decoded yet) after the format and cost checks.

    Raises ImageRefused with the reason, or Pillow's own error for damaged data."""
    if not data:
        raise ImageRefused("zero-byte image")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageRefused(f"image is {len(data)} bytes, over the {MAX_IMAGE_BYTES}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise ImageRefused(f"unsupported format: {_format_name(data)} (crawl images are read as "
                           f"{', '.join(FORMATS)} only)") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageRefused(f"DecompressionBombError: image claims {width}x{height} = {width * height} pixels, "
                           f"over the {MAX_IMAGE_PIXELS}-pixel limit; not decoded")
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageRefused(f"image is {width}x{height}: aspect ratio over {MAX_ASPECT_RATIO}; not decoded")
    if image.format == "JPEG":
        scans = data.count(b"\xff\xda")  # SOS markers: entropy-coded data never holds 0xFF 0xDA
        if scans > MAX_JPEG_SCANS:
            raise ImageRefused(f"JPEG has {scans} scans, over the {MAX_JPEG_SCANS}-scan limit; not decoded")
        if scans * width * height > MAX_JPEG_SCAN_PIXELS:
            raise ImageRefused(f"JPEG has {scans} scans of {width}x{height} pixels, over the "
                               f"{MAX_JPEG_SCAN_PIXELS:.0e} scan-pixel limit; not decoded")
    return image


def as_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` (loaded) in `mode` ("RGB" or "L"): EXIF orientation applied, transparency
    composited on white, 16-bit and 32-bit greyscale scaled to 8 bits."""
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode.startswith("I"):  # "I;16", "I;16B", "I": PNG's 16-bit greyscale
        values = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16)
        image = Image.fromarray((np.clip(values, 0, 65535) // 257).astype(np.uint8), "L")
    elif image.mode == "F":
        raise ImageRefused("floating-point pixels (mode F) are not read")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if image.mode == mode:
        return image
    try:
        return image.convert(mode)
    except ValueError as error:
        raise ImageRefused(f"image mode {image.mode} cannot be read as {mode}: {error}") from None


def check_image(data: bytes) -> str | None:
    """None if `data` is read as an image, else the reason it is not: the checks of
    open_image, then a decode at 1/8 scale (enough to find damage) and the conversion to RGB."""
    try:
        image = open_image(data)
        with image:
            image.draft("RGB", (64, 64))
            as_mode(image, "RGB")
    except Exception as error:  # noqa: BLE001 - any decoder failure is a property of the data
        return image_error_text(error)
    return None


def image_error_text(error: Exception) -> str:
    """A decoder error as recorded: Pillow names the buffer by its memory address, which
    would make the recorded reason (and the Parquet file) change from run to run. A refusal
    is its own reason."""
    if isinstance(error, ImageRefused):
        return str(error)
    return f"{type(error).__name__}: " + _BUFFER.sub("the image bytes", str(error))
