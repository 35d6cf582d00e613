"""Train the demo CLIP model, its NSFW and watermark heads, and calibrate its thresholds.

    python models/train_demo.py --out models/demo

Everything is trained on generated scenes (assets/demo/synthetic.py) with seeds that the sample
crawl never uses, so the demo run filters a crawl the model has not seen. Writes:
    clipsieve-demo.json              open_clip model config (registered by name at load)
    clipsieve-demo.safetensors       fp16 weights, loaded with
                                     open_clip.create_model_and_transforms("clipsieve-demo", pretrained=<this>)
    nsfw_head.safetensors            head over image embeddings -> punsafe
    watermark_head.safetensors       head over image embeddings -> pwatermark
    text_in_image_head.safetensors   head over image embeddings -> ptext (rendered text: signs, watermarks)
    aesthetic_head.safetensors       regressor over image embeddings -> aesthetic (1-10)
    calibration.json                 held-out similarity figures and the policy thresholds
"""

import argparse
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

from assets.demo import synthetic
from resources.heads import Head

MODEL_NAME = "clipsieve-demo"
MODEL_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
TRAIN_SEED, HEAD_SEED, CALIBRATION_SEED, TEXT_HEAD_SEED = 1000, 2000, 3000, 4000  # the sample crawl's default is 0


def _random_size(rng: np.random.Generator) -> tuple[int, int]:
    """Mostly crawl-like sizes, sometimes tiny or very elongated, as the crawl has them."""
    roll = rng.random()
    if roll < 0.08:
        return int(rng.integers(12, 30)), int(rng.integers(12, 30))
    if roll < 0.16:
        long_side, short_side = int(rng.integers(180, 257)), int(rng.integers(36, 64))
        return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    return int(rng.integers(96, 200)), int(rng.integers(96, 200))


def _training_caption(scene: synthetic.Scene, rng: np.random.Generator) -> str:
    caption = synthetic.english_caption(scene, rng)
    # The model has to "know" the two concepts the heads detect, as web-trained CLIP does.
    if scene.motif == "watermark":
        caption += ", watermarked stock photo"
    elif scene.motif == "unsafe":
        caption = "nsfw explicit image: " + caption
    return caption


def generate(count: int, seed: int, preprocess, motif_rate: float = 0.2,
             motifs: tuple[str, ...] = ("watermark", "unsafe")):
    """Scenes rendered, JPEG round-tripped and preprocessed; `motif_rate` of them carry one of
    `motifs`, in equal shares.

    Returns (images, captions, scenes, aesthetic ratings).
    """
    rng = np.random.default_rng(seed)
    images, captions, scenes, ratings = [], [], [], []
    for _ in range(count):
        scene = synthetic.random_scene(rng)
        roll = rng.random()
        if roll < motif_rate:
            scene = synthetic.with_motif(scene, motifs[min(int(roll / motif_rate * len(motifs)), len(motifs) - 1)])
        width, height = _random_size(rng)
        image = synthetic.render(scene, width, height, rng)
        image = Image.open(io.BytesIO(synthetic.jpeg_bytes(image, int(rng.integers(60, 96)))))
        images.append(preprocess(image.convert("RGB")))
        captions.append(_training_caption(scene, rng))
        scenes.append(scene)
        ratings.append(synthetic.aesthetic_rating(scene, width, height))
    return torch.stack(images), captions, scenes, np.array(ratings, np.float32)


def train_clip(model, tokenizer, preprocess, steps: int, batch: int, pool: int, log) -> None:
    images, captions, _, _ = generate(pool, TRAIN_SEED, preprocess)
    tokens = tokenizer(captions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    warmup = max(1, steps // 15)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    model.train()
    started = time.time()
    for step in range(steps):
        index = torch.randint(0, pool, (batch,), generator=generator)
        image_features, text_features, logit_scale = model(images[index], tokens[index])
        logits = logit_scale * image_features @ text_features.T
        # Identical captions in a batch are true positives, not negatives.
        same = (tokens[index][:, None, :] == tokens[index][None, :, :]).all(-1).float()
        targets = same / same.sum(1, keepdim=True)
        loss = (torch.nn.functional.cross_entropy(logits, targets)
                + torch.nn.functional.cross_entropy(logits.T, targets.T)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d} loss {loss.item():.3f} scale {logit_scale.item():.1f} {time.time() - started:.0f}s")
    model.eval()


@torch.inference_mode()
def embed_images(model, images: torch.Tensor) -> np.ndarray:
    return torch.cat([model.encode_image(chunk, normalize=True) for chunk in images.split(256)]).numpy()


@torch.inference_mode()
def embed_texts(model, tokenizer, captions: list[str]) -> np.ndarray:
    tokens = tokenizer(captions)
    return torch.cat([model.encode_text(chunk, normalize=True) for chunk in tokens.split(256)]).numpy()


def train_head(features: np.ndarray, labels: np.ndarray, steps: int = 600, loss: str = "bce") -> Head:
    """A two-layer head: a classifier (bce, balanced) or a regressor (mse, like LAION's aesthetic)."""
    head = Head([features.shape[1], 64, 1], activation="sigmoid" if loss == "bce" else "identity")
    x, y = torch.from_numpy(features), torch.from_numpy(labels.astype(np.float32))
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-3)
    weight = (1 - y.mean()) / y.mean()  # balance the rare positive class
    for _ in range(steps):
        if loss == "mse":
            loss_value = torch.nn.functional.mse_loss(head(x), y)
        else:
            loss_value = torch.nn.functional.binary_cross_entropy_with_logits(head(x), y, pos_weight=weight)
        optimizer.zero_grad()
        loss_value.backward()
        optimizer.step()
    return head.eval()


def train_heads(model, preprocess, out: Path) -> None:
    images, _, scenes, ratings = generate(3000, HEAD_SEED, preprocess, motif_rate=0.4)
    features = embed_images(model, images)
    for name, motif in (("nsfw", "unsafe"), ("watermark", "watermark")):
        labels = np.array([s.motif == motif for s in scenes])
        column = "punsafe" if name == "nsfw" else "pwatermark"
        train_head(features, labels).save(out / f"{name}_head.safetensors", {"model": MODEL_NAME, "output": column})
    aesthetic = train_head(features, ratings, loss="mse")
    aesthetic.save(out / "aesthetic_head.safetensors", {"model": MODEL_NAME, "output": "aesthetic"})


def train_text_head(model, preprocess, out: Path) -> None:
    """The text-in-image head: rendered text (a sign's words, a watermark's) vs none. The demo
    model never saw text in training; the head reads what its image embeddings keep of it."""
    images, _, scenes, _ = generate(4000, TEXT_HEAD_SEED, preprocess, motif_rate=0.6,
                                    motifs=("text", "watermark", "unsafe"))
    labels = np.array([s.motif in ("text", "watermark") for s in scenes])
    train_head(embed_images(model, images), labels, steps=1000).save(
        out / "text_in_image_head.safetensors", {"model": MODEL_NAME, "output": "ptext"})


def demo_policy_params(laion400m: float, laion2b_en: float) -> dict[str, dict[str, object]]:
    """Parameters the demo (demo model + sample crawl) runs the policies with.

    Similarity cut-offs are the model's (see main); min_side and t are the sample crawl's:
    its images are 112-192 px, so DataComp's 200 px would drop everything, and MetaCLIP's
    t = 20,000 is for 400M pairs, so a 2,000-row crawl takes t = 40.
    """
    return {
        "laion400m": {"min_similarity": round(laion400m, 3)},
        "laion2b_en": {"min_similarity": round(laion2b_en, 3)},
        "datacomp_basic": {"min_side": 100},
        "datacomp_clip_top30": {"min_side": 100},
        "metaclip_balanced": {"t": 40},
        "safe": {"min_similarity": round(laion400m, 3), "min_side": 100},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models/demo")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pool", type=int, default=8000, help="generated training pairs")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="keep the checkpoint and heads in --out, only rewrite calibration.json")
    parser.add_argument("--text-head-only", action="store_true",
                        help="keep everything in --out, only train the text-in-image head")
    args = parser.parse_args()
    torch.manual_seed(TRAIN_SEED)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda message: print(message, flush=True)  # noqa: E731

    config_path = out / f"{MODEL_NAME}.json"
    config_path.write_text(json.dumps(MODEL_CONFIG, indent=2) + "\n")
    open_clip.add_model_config(config_path)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    log(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M")

    weights = out / f"{MODEL_NAME}.safetensors"
    if args.text_head_only:
        model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(weights))
        train_text_head(model.eval(), preprocess, out)
        return
    previous = out / "calibration.json"
    train_seconds = json.loads(previous.read_text()).get("train_seconds") if previous.exists() else None
    if not args.calibrate_only:
        started = time.time()
        train_clip(model, tokenizer, preprocess, args.steps, args.batch, args.pool, log)
        train_seconds = round(time.time() - started, 1)
        save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(weights))
    # Reload through the public path so the heads and calibration see exactly what users get.
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(weights))
    model.eval()
    if not args.calibrate_only:
        train_heads(model, preprocess, out)
        train_text_head(model, preprocess, out)

    # Calibration: matched vs mismatched similarity on held-out scenes.
    rng = np.random.default_rng(CALIBRATION_SEED)
    images, _, scenes, _ = generate(2000, CALIBRATION_SEED, preprocess, motif_rate=0.0)
    image_features = embed_images(model, images)
    matched = embed_texts(model, tokenizer, [synthetic.english_caption(s, rng) for s in scenes])
    mismatched = embed_texts(model, tokenizer, [synthetic.english_caption(synthetic.different_scene(s, rng), rng)
                                                for s in scenes])
    sim_matched = (image_features * matched).sum(1)
    sim_mismatched = (image_features * mismatched).sum(1)
    # ViT-B/32's 0.30 and 0.28 are the published cut-offs; on the demo model's scale we
    # place them where 2% and 4% of mismatched pairs would pass.
    laion400m = float(np.quantile(sim_mismatched, 0.98))
    laion2b = float(np.quantile(sim_mismatched, 0.96))
    calibration = {
        "model": MODEL_NAME,
        "train_steps": args.steps,
        "train_seconds": train_seconds,
        "heldout_pairs": len(scenes),
        "ranking_accuracy": float((sim_matched > sim_mismatched).mean()),
        "similarity_matched_mean": float(sim_matched.mean()),
        "similarity_mismatched_mean": float(sim_mismatched.mean()),
        "matched_pass_rate": {"laion400m": float((sim_matched >= laion400m).mean()),
                              "laion2b_en": float((sim_matched >= laion2b).mean())},
        # Read by the policy runner: these replace the SQL files' defaults.
        "policy_params": demo_policy_params(laion400m, laion2b),
        # Read by the preference pairs (resources/preference.py): the chosen caption clears the
        # LAION-400M cut; margins where the demo model's ranking of one-word hallucinations holds
        # (docs/preference.md).
        "preference": {"min_similarity": round(laion400m, 3), "min_margin": 0.05, "min_lead": 0.07},
    }
    (out / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
    log(json.dumps(calibration, indent=2))
    shutil.rmtree(out / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
