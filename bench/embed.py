"""Embedding throughput: clipsieve's embeddings stage vs the pure model forward vs clip-retrieval.

    .venv/bin/python bench/embed.py                        # ViT-B-32 (random weights) + the demo model
    .venv/bin/python bench/embed.py --models vit-b-32 --clip-retrieval /tmp/crvenv/bin/clip-retrieval
    .venv/bin/python bench/embed.py --sweep                # batch size, decode threads, precision, text trim

On generated img2dataset shards of 256 px JPEGs (img2dataset's default size), each
measurement runs in its own process so its peak memory (ru_maxrss) is its own:

    forward         the model alone on pre-decoded, pre-tokenized tensors: the machine's limit
    stage           clipsieve's embed_shard over every shard (tar read, decode, preprocess,
                    tokenize, forward, reorder), options as given
    clip-retrieval  `clip-retrieval inference` on the same tars and checkpoint, when a
                    clip-retrieval executable is given (it pins old packages: own venv,
                    `pip install 'setuptools<70' clip-retrieval`)

Throughput is image+text pairs per second. "process" figures count the whole process from
start to exit (imports and model load included), the fair basis against clip-retrieval's
command line; "steady" figures count the embedding loop only. Embeddings are checked
against plain open_clip (fp32, full 77-token text, PIL decode without draft mode).
Figures are printed, never asserted: they depend on the machine.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resources.clip_model import cpu_has_bf16, resolve_precision  # noqa: E402  (after the path setup above)

MODELS = {
    # ViT-B-32 with random weights (seeded) saved to a checkpoint: the same compute as LAION's model.
    "vit-b-32": ("ViT-B-32", None),
    "demo": ("clipsieve-demo", str(ROOT / "models" / "demo" / "clipsieve-demo.safetensors")),
}


def prepare(workdir: Path, shards: int, samples_per_shard: int, image_size: int) -> Path:
    """The crawl (img2dataset layout, square JPEGs) and its samples tables, made once."""
    from assets.demo.sample_crawl import write_sample_crawl
    from assets.samples import read_samples
    from resources.crawl import CrawlResource
    from resources.lake import LakeResource, samples_path

    crawl = workdir / f"crawl_{shards}x{samples_per_shard}_{image_size}px"
    if not (crawl / "ground_truth.parquet").exists():
        write_sample_crawl(crawl, shards, samples_per_shard, seed=0, image_size=image_size)
    lake = LakeResource(root=str(crawl / "lake"))
    resource = CrawlResource(root=str(crawl))
    for shard in resource.shards():
        if not lake.exists(samples_path(shard)):
            lake.write_parquet(samples_path(shard), read_samples(resource, shard))
    return crawl


def checkpoint(workdir: Path, name: str) -> tuple[str, str]:
    """(open_clip model name, checkpoint path); random-weight models are saved once, seeded."""
    model_name, path = MODELS[name]
    if path:
        return model_name, path
    target = workdir / f"{name}-random.safetensors"
    if not target.exists():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = open_clip.create_model(model_name)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target))
    return model_name, str(target)


# ---- workers: each runs in its own process and prints one JSON line ------------------------


def _usable(crawl: Path) -> list[tuple[str, list[str], list[str], list[str]]]:
    """Per shard: (shard, keys, tar members, captions) of the samples with a usable image."""
    import pyarrow.compute as pc

    from resources.lake import LakeResource, samples_path

    lake = LakeResource(root=str(crawl / "lake"))
    out = []
    for samples in sorted((crawl / "lake" / "shards").iterdir()):
        table = lake.read_parquet(samples_path(samples.name))
        table = table.filter(pc.equal(table.column("image_status"), "ok"))
        out.append((samples.name, table.column("key").to_pylist(), table.column("tar_member").to_pylist(),
                    [c or "" for c in table.column("caption").to_pylist()]))
    return out


def worker_forward(args: argparse.Namespace) -> dict:
    """The model alone on pre-decoded tensors; also the reference embeddings (plain open_clip)."""
    import io

    import torch
    from PIL import Image

    from assets.embeddings import _autocast, _text_features
    from resources.clip_model import ClipModelResource
    from resources.crawl import CrawlResource

    crawl = Path(args.crawl)
    clip = ClipModelResource(model_name=args.model_name, pretrained=args.pretrained, precision=args.precision,
                             device="cpu", torch_threads=args.torch_threads).load()
    resource = CrawlResource(root=str(crawl))
    pixels, captions, keys = [], [], []
    for shard, shard_keys, members, shard_captions in _usable(crawl):
        wanted = dict(zip(members, zip(shard_keys, shard_captions)))
        for name, data in resource.iter_tar(shard, wanted=set(wanted)):
            key, caption = wanted[name]
            pixels.append(clip.preprocess(Image.open(io.BytesIO(data)).convert("RGB")))
            keys.append(key)
            captions.append(caption)
    images = torch.stack(pixels).to(dtype=clip.dtype)
    n, batch = len(keys), args.batch_size
    # Text two ways: every caption at the full context (clip-retrieval's work), and the
    # stage's work (each distinct caption once, sorted by length, cut to the batch's longest).
    all_tokens = clip.tokenizer(captions)
    unique = sorted(set(captions), key=lambda c: int((clip.tokenizer([c]) != 0).sum()))
    unique_tokens = clip.tokenizer(unique)
    timings = {}
    with torch.inference_mode(), _autocast(clip):
        clip.model.encode_image(images[:batch], normalize=True)  # warm-up
        started = time.perf_counter()
        reference_text = torch.cat([_text_features(clip.model, all_tokens[i:i + batch], False).float()
                                    for i in range(0, n, batch)])
        timings["text_full"] = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(0, len(unique), batch):
            _text_features(clip.model, unique_tokens[i:i + batch], True)
        timings["text_stage"] = time.perf_counter() - started
        started = time.perf_counter()
        image = torch.cat([clip.model.encode_image(images[i:i + batch], normalize=True).float()
                           for i in range(0, n, batch)])
        timings["image"] = time.perf_counter() - started
    if args.save:
        np.savez(args.save, keys=np.array(keys), image=image.numpy(), text=reference_text.numpy())
    return {"pairs": n, "unique_captions": len(unique), **{f"{k}_seconds": round(v, 3) for k, v in timings.items()},
            "image_per_second": n / timings["image"],
            "pairs_per_second_full_text": n / (timings["image"] + timings["text_full"]),
            "pairs_per_second_stage_text": n / (timings["image"] + timings["text_stage"])}


def worker_stage(args: argparse.Namespace) -> dict:
    """clipsieve's embeddings stage over every shard, as the asset runs it (and writes it)."""
    from assets.embeddings import embed_shard
    from resources.clip_model import ClipModelResource
    from resources.crawl import CrawlResource
    from resources.embedding_files import write_embeddings
    from resources.lake import LakeResource, samples_path

    crawl = Path(args.crawl)
    source = CrawlResource(root=str(crawl))
    resource = ClipModelResource(model_name=args.model_name, pretrained=args.pretrained, precision=args.precision,
                                 device="cpu", batch_size=args.batch_size, decode_threads=args.decode_threads,
                                 trim_text=not args.full_text, channels_last=args.channels_last,
                                 decode_ahead=args.decode_ahead,
                                 torch_threads=args.torch_threads)
    clip = resource.load()
    lake = LakeResource(root=str(crawl / "lake"))
    out = LakeResource(root=args.out)
    started = time.perf_counter()
    pairs, forward, keys, images, texts = 0, 0.0, [], [], []
    for shard in source.shards():
        result = embed_shard(source, lake.read_parquet(samples_path(shard)), clip, resource.embed_options())
        write_embeddings(out, shard, resource.model_id, result)
        pairs += len(result.keys)
        forward += result.timings["forward"]
        keys += result.keys
        images.append(result.image)
        texts.append(result.text)
    seconds = time.perf_counter() - started
    if args.save:
        np.savez(args.save, keys=np.array(keys), image=np.concatenate(images), text=np.concatenate(texts))
    return {"pairs": pairs, "seconds": round(seconds, 3), "forward_seconds": round(forward, 3),
            "pairs_per_second": pairs / seconds}


# ---- the driver -----------------------------------------------------------------------------


def run_measured(command: list[str], env: dict | None = None) -> tuple[dict | None, float, float, str]:
    """(JSON the command printed last, wall seconds, peak RSS in MB, stderr tail) of one process.

    The peak comes from the JSON: workers report their own ru_maxrss (RUSAGE_CHILDREN of this
    driver would be the maximum over every child so far, not this one's)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    result = None
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    peak = (result or {}).pop("peak_rss_mb", float("nan"))
    return result, wall, peak, "\n".join(stderr.splitlines()[-15:])


def _self(worker: str, model_name: str, pretrained: str, crawl: Path, args: argparse.Namespace, **extra) -> list[str]:
    command = [sys.executable, __file__, "--worker", worker, "--model-name", model_name, "--pretrained", pretrained,
               "--crawl", str(crawl), "--batch-size", str(extra.get("batch_size", args.batch_size)),
               "--precision", extra.get("precision", args.precision),
               "--decode-threads", str(extra.get("decode_threads", args.decode_threads)),
               "--decode-ahead", str(extra.get("decode_ahead", args.decode_ahead)),
               "--torch-threads", str(args.torch_threads)]
    if extra.get("full_text"):
        command.append("--full-text")
    if extra.get("channels_last"):
        command.append("--channels-last")
    for flag in ("save", "out"):
        if extra.get(flag):
            command += [f"--{flag}", str(extra[flag])]
    return command


def clip_retrieval(executable: str, model_name: str, pretrained: str, crawl: Path, out: Path,
                   batch_size: int, workers: int) -> tuple[dict | None, float, float, str]:
    """`clip-retrieval inference` over the crawl's tars, with its peak memory."""
    shards = sorted(p.name[:-4] for p in crawl.glob("*.tar"))
    dataset = f"{crawl}/{{{shards[0]}..{shards[-1]}}}.tar"
    command = [executable, "inference", "--input_dataset", dataset, "--input_format", "webdataset",
               "--output_folder", str(out), "--clip_model", f"open_clip:{model_name}/{pretrained}",
               "--batch_size", str(batch_size), "--num_prepro_workers", str(workers), "--enable_text", "True",
               "--enable_image", "True", "--enable_metadata", "True", "--enable_wandb", "False",
               "--write_batch_size", "1000000", "--use_jit", "False"]
    wrapped = [sys.executable, __file__, "--worker", "peak", "--", *command]
    return run_measured(wrapped, env={"CUDA_VISIBLE_DEVICES": ""})


def worker_peak(command: list[str]) -> dict:
    """Run `command` as this process's only child: its ru_maxrss is then its own peak."""
    import resource

    code = subprocess.call(command, stdout=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"exit_code": code, "peak_rss_mb": peak}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def compare(reference: Path, other_keys: list[str], other_image: np.ndarray, other_text: np.ndarray) -> str:
    ref = np.load(reference)
    position = {k: i for i, k in enumerate(ref["keys"].tolist())}
    rows = [position[k] for k in other_keys]
    image = cosine_rows(ref["image"][rows], other_image)
    text = cosine_rows(ref["text"][rows], other_text)
    return f"cosine to plain open_clip: image min {image.min():.5f}, text min {text.min():.5f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit-b-32,demo", help=f"comma-separated, of {sorted(MODELS)}")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="auto", help="the stage's precision (default: its own, auto)")
    parser.add_argument("--decode-threads", type=int, default=-1, help="-1: the resource's auto choice")
    parser.add_argument("--decode-ahead", type=int, default=-1,
                        help="prepare the next batch while the model runs: 1, 0, or -1 for the resource's auto")
    parser.add_argument("--torch-threads", type=int, default=0)
    parser.add_argument("--full-text", action="store_true", help="stage: encode text at the full context length")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="stage throughput over each option in turn")
    parser.add_argument("--marginal", action="store_true",
                        help="also run the compared variants on half the shards: pairs/s of the other half, "
                             "start-up (imports, model load) excluded from both tools alike")
    parser.add_argument("--clip-retrieval", default=os.environ.get("CLIP_RETRIEVAL", ""),
                        help="clip-retrieval executable in its own venv ($CLIP_RETRIEVAL)")
    parser.add_argument("--workdir", default=str(ROOT / "data" / "bench_embed"))
    # worker mode (internal)
    parser.add_argument("--worker", choices=["forward", "stage", "peak"])
    parser.add_argument("--model-name")
    parser.add_argument("--pretrained")
    parser.add_argument("--crawl")
    parser.add_argument("--save")
    parser.add_argument("--out")
    parser.add_argument("command", nargs="*")
    args = parser.parse_args()

    if args.worker == "peak":
        print(json.dumps(worker_peak(args.command)))
        return
    if args.worker:
        import resource

        result = worker_forward(args) if args.worker == "forward" else worker_stage(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    crawl = prepare(workdir, args.shards, args.samples_per_shard, args.image_size)
    has_bf16 = cpu_has_bf16()
    resolved = resolve_precision(args.precision, "cpu", has_bf16)
    half = prepare(workdir, args.shards // 2, args.samples_per_shard, args.image_size) if args.marginal else None
    print(f"crawl: {crawl} ({args.shards} shards x {args.samples_per_shard}, {args.image_size} px JPEGs); "
          f"{os.cpu_count()} cores; batch {args.batch_size}, precision {args.precision} ({resolved} here)")
    for name in args.models.split(","):
        model_name, pretrained = checkpoint(workdir, name)
        print(f"\n== {name} ({model_name}, {Path(pretrained).name})")
        reference = workdir / f"{name}-reference.npz"
        # The reference is plain open_clip at fp32; the pure forward also runs at the precision
        # the stage resolves to, so each stage figure is set against its own precision's limit.
        forward, wall, peak, err = run_measured(_self("forward", model_name, pretrained, crawl, args,
                                                      precision="fp32", save=reference))
        if forward is None:
            print("forward failed:\n" + err)
            continue
        print(f"pure forward fp32 ({forward['pairs']} pairs, {forward['unique_captions']} distinct captions): "
              f"image {forward['image_per_second']:.1f}/s; image+text {forward['pairs_per_second_full_text']:.1f} "
              f"pairs/s with every caption at full length, {forward['pairs_per_second_stage_text']:.1f} pairs/s "
              f"with the stage's text work (distinct, cut); peak RSS {peak:.0f} MB")
        limits = {"fp32": forward["pairs_per_second_stage_text"]}
        if resolved != "fp32":
            fast, _, fast_peak, err = run_measured(_self("forward", model_name, pretrained, crawl, args,
                                                         precision=resolved))
            if fast:
                limits[resolved] = fast["pairs_per_second_stage_text"]
                print(f"pure forward {resolved}: image {fast['image_per_second']:.1f}/s; "
                      f"{limits[resolved]:.1f} pairs/s with the stage's text work; peak RSS {fast_peak:.0f} MB")
        ours_process: dict[str, tuple[int, float]] = {}  # label -> (pairs, process wall seconds)
        ours_marginal: dict[str, float] = {}  # label -> pairs/s of the extra shards (--marginal)

        # (label, options); "before" is the stage as first written. The ones compared with
        # clip-retrieval are the defaults and, where they resolve to another precision, fp32.
        variants = [(f"defaults (precision {args.precision} = {resolved})", {})]
        if resolved != "fp32":
            variants.append(("precision=fp32", {"precision": "fp32"}))
        variants.append(("before: fp32, batch_size=256, decode_threads=0, full_text=True",
                         {"precision": "fp32", "batch_size": 256, "decode_threads": 0, "full_text": True}))
        if args.sweep:
            variants += [(", ".join(f"{k}={value}" for k, value in options.items()), options) for options in (
                {"decode_threads": 1}, {"decode_threads": 2}, {"decode_ahead": 1},
                {"decode_ahead": 1, "decode_threads": 1}, {"batch_size": 64}, {"batch_size": 128},
                {"full_text": True}, {"channels_last": True}, {"precision": "amp_bf16"},
                {"precision": "amp_bf16", "batch_size": 128})]
        for label, variant in variants:
            out = workdir / "stage_out"
            save = workdir / f"{name}-stage.npz"
            stage, wall, peak, err = run_measured(_self("stage", model_name, pretrained, crawl, args, out=out,
                                                        save=save, **variant))
            if stage is None:
                print(f"stage [{label}] failed:\n{err}")
                continue
            saved = np.load(save)
            limit = limits.get(resolve_precision(variant.get("precision", args.precision), "cpu", has_bf16),
                               limits["fp32"])
            print(f"stage [{label}]: {stage['pairs_per_second']:.1f} pairs/s steady "
                  f"({stage['pairs_per_second'] / limit:.0%} of pure forward at its precision), "
                  f"{stage['pairs'] / wall:.1f} pairs/s process ({wall:.1f} s wall); forward "
                  f"{stage['forward_seconds'] / stage['seconds']:.0%} of stage time; peak RSS {peak:.0f} MB; "
                  + compare(reference, saved["keys"].tolist(), saved["image"], saved["text"]))
            if not label.startswith("before") and len(ours_process) < 2:
                ours_process[label] = (stage["pairs"], wall)
                if half:  # the same on half the shards: the difference is the marginal rate
                    small, small_wall, _, _ = run_measured(_self("stage", model_name, pretrained, half, args,
                                                                 out=out, **variant))
                    if small:
                        ours_marginal[label] = (stage["pairs"] - small["pairs"]) / (wall - small_wall)

        if args.clip_retrieval and name == "demo":
            print("clip-retrieval: skipped (its own open_clip does not know the demo model's config)")
        elif args.clip_retrieval:
            out = workdir / f"clip_retrieval_{name}"
            shutil.rmtree(out, ignore_errors=True)
            result, wall, peak, err = clip_retrieval(args.clip_retrieval, model_name, pretrained, crawl, out,
                                                     args.batch_size, max(1, os.cpu_count() or 1))
            if not result or result.get("exit_code") != 0 or not (out / "img_emb").exists():
                print(f"clip-retrieval failed:\n{err}")
                continue
            import pyarrow.parquet as pq

            keys = pq.read_table(sorted((out / "metadata").glob("*.parquet"))[0]).column("key").to_pylist()
            image = np.concatenate([np.load(p) for p in sorted((out / "img_emb").glob("*.npy"))])
            text = np.concatenate([np.load(p) for p in sorted((out / "text_emb").glob("*.npy"))])
            print(f"clip-retrieval inference: {len(keys) / wall:.1f} pairs/s process ({len(keys)} pairs, "
                  f"{wall:.1f} s wall); peak RSS {peak:.0f} MB; "
                  + compare(reference, keys, image, text))
            theirs = len(keys) / wall
            for label, (pairs, seconds) in ours_process.items():
                print(f"clipsieve [{label}] / clip-retrieval (fp32), process throughput: "
                      f"{pairs / seconds / theirs:.2f}x")
            if half:
                shutil.rmtree(out.with_name(out.name + "_half"), ignore_errors=True)
                small, small_wall, _, err = clip_retrieval(args.clip_retrieval, model_name, pretrained, half,
                                                           out.with_name(out.name + "_half"), args.batch_size,
                                                           max(1, os.cpu_count() or 1))
                small_pairs = sum(len(pq.read_table(p)) for p in (out.with_name(out.name + "_half") / "metadata")
                                  .glob("*.parquet"))
                theirs_marginal = (len(keys) - small_pairs) / (wall - small_wall)
                print(f"clip-retrieval marginal: {theirs_marginal:.1f} pairs/s ({len(keys) - small_pairs} more "
                      f"pairs took {wall - small_wall:.1f} s more)")
                for label, rate in ours_marginal.items():
                    print(f"clipsieve [{label}] marginal {rate:.1f} pairs/s / clip-retrieval marginal: "
                          f"{rate / theirs_marginal:.2f}x")


if __name__ == "__main__":
    main()
