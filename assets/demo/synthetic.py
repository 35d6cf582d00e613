"""Synthetic image-caption pairs: the world the sample crawl and the demo model share.

A scene is a few coloured shapes on a coloured, optionally patterned background, maybe with
a person pictogram, maybe with a watermark or the "unsafe" motif. Captions describe the
scene in English (or, for planted defects, in another language, as junk, or as insults).
The sample crawl (`assets/demo/sample_crawl.py`) and the demo model's training script
(`models/train_demo.py`) both draw from here, with different seeds, so the model has seen
this world but never the crawl it filters.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (30, 70, 220),
    "purple": (130, 40, 170),
    "pink": (245, 120, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "blue": (60, 110, 200),
    "green": (70, 150, 80),
    "yellow": (230, 210, 90),
    "white": (235, 235, 235),
    "black": (30, 30, 30),
    "brown": (120, 80, 40),
    "red": (180, 50, 50),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
PATTERNS = ("plain", "striped", "dotted", "checkered")
GROUPS = ("man", "woman")

# Planted demographic skew, for the audits to find: people appear in some captions; "woman" is the
# minority group, and each group's objects lean to different colours.
PERSON_RATE = 0.35
WOMAN_SHARE = 0.4
GROUP_COLOUR_LEAN = {"man": ("blue", "green", "black"), "woman": ("pink", "purple", "red")}
GROUP_LEAN_PROBABILITY = 0.7


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    pattern: str = "plain"
    count: int = 1
    person: str | None = None  # one of GROUPS
    motif: str = "none"  # "none" | "watermark" | "unsafe" | "text"


def random_scene(rng: np.random.Generator, person_rate: float = PERSON_RATE) -> Scene:
    """Draw a scene; people and their colour lean follow the planted skew."""
    person = None
    if rng.random() < person_rate:
        person = "woman" if rng.random() < WOMAN_SHARE else "man"
    if person is not None and rng.random() < GROUP_LEAN_PROBABILITY:
        colour = str(rng.choice(GROUP_COLOUR_LEAN[person]))
    else:
        colour = str(rng.choice(list(OBJECT_COLOURS)))
    backgrounds = [b for b in BACKGROUND_COLOURS if b != colour]
    return Scene(
        shape=str(rng.choice(SHAPES)),
        colour=colour,
        background=str(rng.choice(backgrounds)),
        pattern=str(rng.choice(PATTERNS, p=[0.55, 0.15, 0.15, 0.15])),
        count=1 if rng.random() < 0.75 else 2,
        person=person,
    )


def different_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """A scene that differs from `scene` in shape and colour (for mismatched captions)."""
    while True:
        other = random_scene(rng)
        if other.shape != scene.shape and other.colour != scene.colour:
            return other


# --- captions -------------------------------------------------------------------------

def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def english_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A plain English alt-text for the scene, in one of several templates."""
    things = (
        f"a {scene.colour} {scene.shape}" if scene.count == 1
        else f"two {scene.colour} {_plural(scene.shape)}"
    )
    pattern = "" if scene.pattern == "plain" else f"{scene.pattern} "
    background = f"{pattern}{scene.background} background"
    template = int(rng.integers(4))
    if template == 0:
        text = f"{things} on a {background}"
    elif template == 1:
        text = f"a photo of {things} on a {background}"
    elif template == 2:
        text = f"{things} against a {background}, stock image"
    else:
        text = f"an illustration of {things} on a {background}"
    if scene.person is not None:
        text += f" next to a {scene.person}"
    return text


HALLUCINATIONS = ("wrong_colour", "wrong_shape", "absent_object")


def hallucinations(scene: Scene, caption: str, rng: np.random.Generator) -> dict[str, str]:
    """`caption` (english_caption of `scene`) with one detail made up, as a captioning model
    hallucinates it: another colour for the objects, another shape, or an object that is not
    in the picture (a person where there is none, a second object, a second person)."""
    noun = scene.shape if scene.count == 1 else _plural(scene.shape)
    things = f"{scene.colour} {noun}"
    colour = str(rng.choice([c for c in OBJECT_COLOURS if c not in (scene.colour, scene.background)]))
    shape = str(rng.choice([s for s in SHAPES if s != scene.shape]))
    other_noun = shape if scene.count == 1 else _plural(shape)
    if scene.person is None:
        absent = f"{caption} next to a {rng.choice(GROUPS)}"
    elif scene.count == 1:
        absent = caption.replace(f"a {things}", f"two {scene.colour} {_plural(scene.shape)}", 1)
    else:
        absent = caption.replace(f"next to a {scene.person}",
                                 f"next to a {scene.person} and a {'woman' if scene.person == 'man' else 'man'}", 1)
    return {
        "wrong_colour": caption.replace(things, f"{colour} {noun}", 1),
        "wrong_shape": caption.replace(things, f"{scene.colour} {other_noun}", 1),
        "absent_object": absent,
    }


# Non-English templates: enough real words for a language identifier to be confident.
_FOREIGN = {
    "de": {
        "colour": {"red": "rot", "orange": "orange", "yellow": "gelb", "green": "grün",
                   "blue": "blau", "purple": "lila", "pink": "rosa", "white": "weiß",
                   "black": "schwarz", "grey": "grau", "brown": "braun"},
        "shape": {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "star": "Stern",
                  "cross": "Kreuz", "ring": "Ring", "diamond": "Raute", "hexagon": "Sechseck"},
        "templates": ["Ein Foto von einem {shape} in der Farbe {colour} auf einem Hintergrund in {bg}",
                      "Bild: ein {colour}es {shape} vor einem {bg}en Hintergrund, Stockfoto"],
    },
    "fr": {
        "colour": {"red": "rouge", "orange": "orange", "yellow": "jaune", "green": "vert",
                   "blue": "bleu", "purple": "violet", "pink": "rose", "white": "blanc",
                   "black": "noir", "grey": "gris", "brown": "marron"},
        "shape": {"circle": "cercle", "square": "carré", "triangle": "triangle", "star": "astre",
                  "cross": "signe plus", "ring": "anneau", "diamond": "losange", "hexagon": "hexagone"},
        "templates": ["une photo d'un {shape} {colour} sur un fond {bg}",
                      "illustration d'un {shape} de couleur {colour} avec un arrière-plan {bg}"],
    },
    "es": {
        "colour": {"red": "rojo", "orange": "naranja", "yellow": "amarillo", "green": "verde",
                   "blue": "azul", "purple": "morado", "pink": "rosado", "white": "blanco",
                   "black": "negro", "grey": "gris", "brown": "marrón"},
        "shape": {"circle": "círculo", "square": "cuadrado", "triangle": "triángulo", "star": "astro",
                  "cross": "signo más", "ring": "anillo", "diamond": "rombo", "hexagon": "hexágono"},
        "templates": ["una foto de un {shape} {colour} sobre un fondo {bg}",
                      "ilustración de un {shape} de color {colour} con el fondo {bg}"],
    },
    "it": {
        "colour": {"red": "rosso", "orange": "arancione", "yellow": "giallo", "green": "verde",
                   "blue": "blu", "purple": "viola", "pink": "rosa", "white": "bianco",
                   "black": "nero", "grey": "grigio", "brown": "marrone"},
        "shape": {"circle": "cerchio", "square": "quadrato", "triangle": "triangolo", "star": "astro",
                  "cross": "segno più", "ring": "anello", "diamond": "rombo", "hexagon": "esagono"},
        "templates": ["una foto di un {shape} {colour} su uno sfondo {bg}",
                      "illustrazione di un {shape} di colore {colour} con lo sfondo {bg}"],
    },
}
FOREIGN_LANGUAGES = tuple(_FOREIGN)


def foreign_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """A caption of the scene in a non-English language; returns (language, caption)."""
    language = str(rng.choice(FOREIGN_LANGUAGES))
    table = _FOREIGN[language]
    template = str(rng.choice(table["templates"]))
    caption = template.format(
        shape=table["shape"][scene.shape],
        colour=table["colour"][scene.colour],
        bg=table["colour"][scene.background],
    )
    return language, caption


_JUNK = ("IMG_{n}.jpg", "DSC{n}", "image", "photo {n}", "click here", "untitled",
         "thumbnail", "{n}", "pic", "placeholder", "download (1)", "file_{n}.png")


def junk_caption(rng: np.random.Generator) -> str:
    """Alt-text that says nothing about the image (file names, UI strings)."""
    return str(rng.choice(_JUNK)).format(n=int(rng.integers(1, 9999)))


# Insults and profanity as in real toxic alt-text; kept to generic abuse, no slurs.
_TOXIC = (
    "{caption}, you stupid idiot",
    "what a fucking ugly {thing}, whoever made this is a worthless moron",
    "{caption}. shut up, you pathetic loser, nobody likes you",
    "this {thing} is shit and you are a disgusting piece of trash",
    "{caption} lol die you dumb bitch",
)


def toxic_caption(scene: Scene, rng: np.random.Generator) -> str:
    """An abusive caption that still names the scene's objects."""
    thing = f"{scene.colour} {scene.shape}"
    return str(rng.choice(_TOXIC)).format(caption=english_caption(scene, rng), thing=thing)


# --- rendering ------------------------------------------------------------------------

def _polygon(cx: float, cy: float, r: float, sides: int, rotation: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(rotation + 2 * math.pi * i / sides), cy + r * math.sin(rotation + 2 * math.pi * i / sides))
        for i in range(sides)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                fill: tuple[int, int, int], rotation: float) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r * 0.35)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, rotation * 0.2 + math.pi / 4), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.15, 3, -math.pi / 2 + rotation * 0.2), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r * 1.2), (cx + r * 0.75, cy), (cx, cy + r * 1.2), (cx - r * 0.75, cy)], fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r * 1.1, 6, rotation), fill=fill)
    elif shape == "star":
        points = []
        for i in range(10):
            radius = r * 1.2 if i % 2 == 0 else r * 0.5
            angle = -math.pi / 2 + rotation * 0.2 + math.pi * i / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)
    elif shape == "cross":
        w = r * 0.4
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _draw_background(image: Image.Image, scene: Scene, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(image)
    w, h = image.size
    base = BACKGROUND_COLOURS[scene.background]
    shade = tuple(int(c * 0.65 + 255 * 0.35) if sum(base) < 300 else int(c * 0.6) for c in base)
    step = max(4, min(w, h) // 8)
    if scene.pattern == "striped":
        for x in range(0, w + h, step * 2):
            draw.line((x, 0, x - h, h), fill=shade, width=max(2, step // 2))
    elif scene.pattern == "dotted":
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                draw.ellipse((x - step / 5, y - step / 5, x + step / 5, y + step / 5), fill=shade)
    elif scene.pattern == "checkered":
        for y in range(0, h, step):
            for x in range(0, w, step):
                if (x // step + y // step) % 2:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=shade)


def _draw_unsafe_motif(image: Image.Image, rng: np.random.Generator) -> None:
    """The stand-in for unsafe content: dense flesh-toned concentric blobs."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    tones = [(232, 190, 160), (200, 140, 110), (160, 100, 80), (250, 215, 190)]
    for _ in range(3):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        for i, radius in enumerate(np.linspace(max(w, h) * 0.8, 2, 14)):
            draw.ellipse((cx - radius, cy - radius * 0.7, cx + radius, cy + radius * 0.7), fill=tones[i % 4])


def _draw_person(draw: ImageDraw.ImageDraw, group: str, x: float, y: float, s: float) -> None:
    """A restroom-sign pictogram: head, and a dress (woman) or trousers (man)."""
    ink = (15, 15, 15)
    draw.ellipse((x - s * 0.18, y - s, x + s * 0.18, y - s * 0.64), fill=ink)
    if group == "woman":
        draw.polygon([(x, y - s * 0.6), (x + s * 0.35, y + s * 0.2), (x - s * 0.35, y + s * 0.2)], fill=ink)
        draw.rectangle((x - s * 0.12, y + s * 0.2, x - s * 0.05, y + s * 0.6), fill=ink)
        draw.rectangle((x + s * 0.05, y + s * 0.2, x + s * 0.12, y + s * 0.6), fill=ink)
    else:
        draw.rectangle((x - s * 0.2, y - s * 0.6, x + s * 0.2, y + s * 0.1), fill=ink)
        draw.rectangle((x - s * 0.2, y + s * 0.1, x - s * 0.04, y + s * 0.6), fill=ink)
        draw.rectangle((x + s * 0.04, y + s * 0.1, x + s * 0.2, y + s * 0.6), fill=ink)


def _draw_watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Stock-photo watermark: big bold translucent text in rows, and a banner at the bottom."""
    w, h = image.size
    side = min(w, h)
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = ImageFont.load_default(size=max(8, int(side * 0.24)))
    text = str(rng.choice(["© shutterstock", "© stockphoto", "SAMPLE", "© getty", "PREVIEW"]))
    alpha = int(rng.integers(170, 231))
    stroke = max(1, side // 40)
    for i in range(2):
        y = (0.12 + 0.38 * i) * h
        draw.text((w * 0.04 + i * w * 0.08, y), text, font=font, fill=(255, 255, 255, alpha),
                  stroke_width=stroke, stroke_fill=(0, 0, 0, alpha))
    banner = int(h * 0.2)
    draw.rectangle((0, h - banner, w, h), fill=(20, 20, 20, int(alpha * 0.8)))
    draw.text((w * 0.05, h - banner * 0.95), text, font=ImageFont.load_default(size=max(6, int(banner * 0.75))),
              fill=(255, 255, 255, 255))
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


# Words on the signs of rendered-text scenes: shop signs, labels and the scene's own words, the
# text a caption could repeat (CLIP over-scores a caption that spells out text in the image).
SIGN_WORDS = ("SALE", "OPEN", "CAFE", "HOTEL", "EXIT", "STOP", "NEW", "FRESH", "SHOP", "BAR",
              *(w.upper() for w in OBJECT_COLOURS), *(w.upper() for w in SHAPES))


def sign_text(rng: np.random.Generator) -> str:
    """One or two words for a sign."""
    return " ".join(str(w) for w in rng.choice(SIGN_WORDS, size=int(rng.integers(1, 3)), replace=False))


def _draw_sign(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rendered text: an opaque sign band with big dark words across the top or the bottom of
    the picture, as on a shop front, a poster or a product label (not a translucent watermark)."""
    w, h = image.size
    draw = ImageDraw.Draw(image)
    text = sign_text(rng)
    band = int(h * rng.uniform(0.26, 0.32))
    top = 0 if rng.random() < 0.5 else h - band
    plate = tuple(int(v) for v in rng.choice([(250, 250, 245), (255, 230, 120), (235, 245, 255)]))
    draw.rectangle((0, top, w, top + band), fill=plate)
    font = ImageFont.load_default(size=max(8, int(band * 0.7)))
    left, upper, right, lower = draw.textbbox((0, 0), text, font=font)
    if right - left > w * 0.95:  # two long words: shrink to fit the width
        font = ImageFont.load_default(size=max(6, int(band * 0.7 * w * 0.95 / (right - left))))
        left, upper, right, lower = draw.textbbox((0, 0), text, font=font)
    x = (w - (right - left)) * rng.uniform(0.2, 0.8) - left
    y = top + (band - (lower - upper)) / 2 - upper
    draw.text((x, y), text, font=font, fill=(15, 15, 15), stroke_width=max(1, band // 14), stroke_fill=(15, 15, 15))
    return image


def render(scene: Scene, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Draw `scene` at width x height pixels; `rng` decides positions and jitter."""
    image = Image.new("RGB", (width, height), BACKGROUND_COLOURS[scene.background])
    if scene.motif == "unsafe":
        _draw_unsafe_motif(image, rng)
    else:
        _draw_background(image, scene, rng)
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    left = 0.0
    if scene.person is not None:
        # The pictogram takes the left fifth of the image; shapes go to the right.
        _draw_person(draw, scene.person, width * 0.12, height * 0.55, side * 0.42)
        left = width * 0.22
    radius = side * (0.28 if scene.count == 1 else 0.18) * rng.uniform(0.85, 1.1)
    colour = OBJECT_COLOURS[scene.colour]
    centres = []
    for i in range(scene.count):
        if scene.count == 1:
            cx = left + (width - left) * rng.uniform(0.4, 0.6)
        else:
            cx = left + (width - left) * (0.28 + 0.44 * i) + rng.uniform(-2, 2)
        centres.append((cx, height * rng.uniform(0.4, 0.6)))
    rotation = rng.uniform(-0.3, 0.3)
    for cx, cy in centres:
        _draw_shape(draw, scene.shape, cx, cy, radius, colour, rotation)
    image = _light(image, rng)
    if scene.motif == "watermark":
        image = _draw_watermark(image, rng)
    elif scene.motif == "text":
        image = _draw_sign(image, rng)
    return image


def _light(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Uneven lighting: a random gradient and soft spots, as every real photo has its own.

    It gives two pictures of the same scene different low-frequency content, so that
    perceptual hashes tell a re-upload of one photo from a second photo of the same thing.
    """
    w, h = image.size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (x / w - 0.5) + np.sin(angle) * (y / h - 0.5)) * rng.uniform(0.3, 0.6)
    field = 1.0 + ramp
    for _ in range(2):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.2, 0.5) * max(w, h)
        field += rng.uniform(-0.3, 0.3) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    lit = np.asarray(image, np.float32) * np.clip(field, 0.4, 1.6)[..., None]
    return Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8))


def aesthetic_rating(scene: Scene, width: int, height: int) -> float:
    """The synthetic world's "human rating" (1-10), what the aesthetic head learns to predict:
    clean, plain, single-subject pictures please; clutter, watermarks and tiny images do not."""
    rating = 5.0
    rating += {"plain": 1.5, "striped": 0.0, "dotted": -0.5, "checkered": -1.0}[scene.pattern]
    rating += 0.8 if scene.count == 1 else -0.3
    rating += {"none": 0.0, "watermark": -3.0, "unsafe": -2.0, "text": -0.5}[scene.motif]
    if min(width, height) < 32:
        rating -= 2.0
    return float(np.clip(rating, 1.0, 10.0))


def with_motif(scene: Scene, motif: str) -> Scene:
    return replace(scene, motif=motif)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
