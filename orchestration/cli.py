"""The `clipsieve` command.

    clipsieve sample-crawl OUT --shards N --samples-per-shard M --seed S [--image-size 256]
                           [--near-duplicate-share 0.3]
    clipsieve materialize --crawl CRAWL --lake LAKE [--model NAME --pretrained TAG_OR_PATH]
                          [--shards 00000,00001 --no-cross-shard]   (parallel runs: disjoint shards)
                          [--in-process]     (runs in this process, not through the run launcher)
                          [--flyt]           (also train the FLYT scorer and its policies: the flyt group)
    clipsieve downstream-data OUT.parquet [--samples 1000 --seed 5000]   labelled scenes for FLYT
    clipsieve proxy --lake LAKE --crawl CRAWL [--policies a,b] [--steps 400 --batch 128 --seeds 0,1]
                                                  train a small CLIP on each subset, zero-shot accuracy
    clipsieve query --lake LAKE [--json] "SELECT ..."
    clipsieve evaluate --lake LAKE --truth CRAWL/ground_truth.parquet [--json-out PATH]
    clipsieve export --lake LAKE --subset POLICY --format {uids,parquet,webdataset} --out DIR
    clipsieve export-pairs --lake LAKE --out DIR [--crawl CRAWL] [--prompt "Describe the image."]
                                                  preference pairs in TRL's DPO format (JSONL, Parquet;
                                                  with --crawl also webdataset shards with the images)
    clipsieve search --lake LAKE --subset POLICY ["a red car" | --image PATH] [-k 10] [--json]
    clipsieve explain --lake LAKE KEY
    clipsieve serve --lake LAKE [--crawl CRAWL] [--host 127.0.0.1 --port 1234]   search service and web page
    clipsieve lineage --lake LAKE --subset POLICY
    clipsieve summary --lake LAKE
    clipsieve gc --lake LAKE                      delete retired/: the outputs of shards that left the crawl
    clipsieve heads import {laion-aesthetic-v1,laion-aesthetic-v2,mlp} FILE --out HEAD.safetensors
    clipsieve heads show [--model NAME --pretrained TAG_OR_PATH]

`materialize` exits 0 when everything ran (checks may have warned), 1 when a step crashed,
3 when a blocking check stopped a subset's index, audit and export and nothing crashed.
"""

import argparse
import csv
import json
import logging
import os
import sys
from pathlib import Path

import duckdb

from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, model_id
from resources.safe_paths import check_policy_name


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=os.environ.get("CLIPSIEVE_MODEL", DEMO_MODEL),
                        help="open_clip model name (default: the demo model, or $CLIPSIEVE_MODEL)")
    parser.add_argument("--pretrained", default=None,
                        help="open_clip pretrained tag (e.g. laion2b_s34b_b79k) or checkpoint path "
                             "(default: the demo checkpoint, or $CLIPSIEVE_PRETRAINED)")


def _pretrained(args: argparse.Namespace) -> str:
    if args.pretrained:
        return args.pretrained
    if os.environ.get("CLIPSIEVE_PRETRAINED"):
        return os.environ["CLIPSIEVE_PRETRAINED"]
    if args.model != DEMO_MODEL:
        raise SystemExit(f"--model {args.model} needs --pretrained (e.g. laion2b_s34b_b79k for ViT-B-32)")
    return DEMO_CHECKPOINT


def _instance(lake: str):
    """The Dagster instance at $DAGSTER_HOME, else one kept in <lake>/_dagster."""
    from orchestration.instance import open_instance

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        if "://" in lake:
            raise SystemExit("the lake is remote: set DAGSTER_HOME to the Dagster instance folder to record runs in")
        home = str(Path(lake, "_dagster").resolve())
    return open_instance(home)  # under a lock: parallel first opens would corrupt a SQLite instance


def cmd_sample_crawl(args: argparse.Namespace) -> None:
    from assets.demo.sample_crawl import write_sample_crawl

    summary = write_sample_crawl(args.out, args.shards, args.samples_per_shard, args.seed, args.image_size,
                                 args.near_duplicate_share)
    print(json.dumps(summary, indent=2))


def cmd_downstream_data(args: argparse.Namespace) -> None:
    from assets.flyt.downstream import generate_scenes, write_downstream

    data = generate_scenes(args.samples, args.seed)
    path = write_downstream(data, Path(args.out))
    print(json.dumps({"path": str(path), "images": len(data), "classes": len(data.classes),
                      "templates": data.templates}, indent=2))


def cmd_proxy(args: argparse.Namespace) -> None:
    from assets.downstream_proxy import (
        HELDOUT_SAMPLES,
        PROXY_PATH,
        ProxySettings,
        format_table,
        proxy_subsets,
        results_json,
        run_proxy,
    )
    from assets.flyt.downstream import HELDOUT_SEED, generate_scenes, read_downstream
    from resources.catalog import open_catalog
    from resources.crawl import CrawlResource
    from resources.lake import LakeResource

    given = {"steps": args.steps, "batch_size": args.batch, "lr": args.lr,
             "seeds": tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None}
    settings = ProxySettings(**{name: value for name, value in given.items() if value is not None})
    heldout = read_downstream(args.heldout) if args.heldout else generate_scenes(
        args.heldout_samples or HELDOUT_SAMPLES, HELDOUT_SEED)
    lake = LakeResource(root=args.lake)
    catalog = open_catalog(args.lake, model_id(args.model, _pretrained(args)))
    try:
        subsets = proxy_subsets(catalog, args.policies.split(",") if args.policies else None)
    finally:
        catalog.close()
    results = run_proxy(lake, CrawlResource(root=args.crawl), subsets, heldout, settings,
                        lambda message: print(message, flush=True))
    written = results_json(results, settings, heldout)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(written, indent=2))
    else:
        lake.write_json(PROXY_PATH, written)
    print(format_table(results, settings, heldout))
    print(f"\nwritten to {args.json_out or lake.path(PROXY_PATH)}")


# `clipsieve materialize` exit statuses (argparse's usage errors are 2).
EXIT_CRASHED = 1  # a step failed with an error: its shard or asset is not done
EXIT_BLOCKED = 3  # every step ran or was skipped below a blocking check that failed; no step crashed


def cmd_materialize(args: argparse.Namespace) -> None:
    from orchestration.dagster_server import DagsterServer
    from orchestration.definitions import build_definitions, location_env
    from orchestration.runner import PipelineFailed, run_pipeline

    settings = {"crawl": args.crawl, "lake": args.lake, "model_name": args.model, "pretrained": _pretrained(args)}
    defs = build_definitions(**settings)
    instance = _instance(args.lake)
    shards = [s.strip() for s in args.shards.split(",") if s.strip()] if args.shards else None

    def log(message: str) -> None:
        print(message, flush=True)

    with DagsterServer(instance.root_directory, location_env(**settings), log=log) as server:
        try:
            report = run_pipeline(defs, instance, server, in_process=args.in_process, log=log, shards=shards,
                                  cross_shard=not args.no_cross_shard, flyt=args.flyt)
        except PipelineFailed as failure:
            report = failure.report
    print(f"shards: {len(report.shards)}; with per-shard work: {len(report.per_shard_runs)}; "
          f"cross-shard assets: {len(report.cross_shard_assets)}; {report.seconds:.1f}s")
    print(f"runs recorded in {instance.root_directory}")
    print_summary(args.lake)
    if report.removed_shards:
        print(f"\nshards no longer in the crawl, now out of the pool: {', '.join(report.removed_shards)} "
              "(their lake files are in retired/; `clipsieve gc` deletes them)")
    print(outcome_summary(report.warnings, report.blocked, report.failures))
    if report.failures:
        raise SystemExit(EXIT_CRASHED)
    if report.blocked:
        raise SystemExit(EXIT_BLOCKED)


def outcome_summary(warnings: list[str], blocked: list[str], crashed: list[str]) -> str:
    """The end of `materialize`: checks that warned, subsets that were blocked, steps that crashed."""
    lines = ["", f"checks that warned: {len(warnings)} (the subsets, indices, audits and exports went on)"]
    lines += [f"  {line}" for line in warnings]
    lines.append(f"blocked by a failed blocking check: {len(blocked)} (that subset's index, audit and export "
                 "stop; exit status 3)")
    lines += [f"  {line}" for line in blocked]
    if crashed:
        lines.append(f"runs with a crashed step: {len(crashed)} (exit status 1)")
        lines += [f"  {line}" for line in crashed]
    return "\n".join(lines)


def print_summary(lake_root: str) -> None:
    from assets.evaluation import EVALUATION_PATH, format_tables
    from resources.lake import LakeResource

    lake = LakeResource(root=lake_root)
    audits = lake.glob("audits/*/metrics.json")
    if not audits:
        print("no audits in the lake yet")
        return
    first = lake.read_json(audits[0])
    crawl = first["crawl"]
    print(f"\ncrawl rows {crawl['crawl_rows']}: usable {crawl['usable']}, failed downloads "
          f"{crawl['failed_download']}, corrupt {crawl['corrupt_image']}, missing {crawl['missing_image']}")
    header = f"{'policy':<22}{'kept':>7}{'of':>7}{'share':>8}{'nsfw before':>13}{'after':>8}" \
             f"{'wmark before':>14}{'after':>8}{'index':>8}{'recall@10':>11}"
    print(header)
    for path in audits:
        metrics = lake.read_json(path)
        policy, before, after = metrics["policy"], metrics["before"], metrics["after"]
        infos = lake.glob(f"indices/{policy}/{metrics['model_id']}/index_info.json")
        info = lake.read_json(infos[0]) if infos else {"count": "-", "recall_at_10": float("nan")}
        print(f"{policy:<22}{after['samples']:>7}{before['samples']:>7}{metrics['kept_share']:>8.3f}"
              f"{before.get('nsfw_rate') or 0:>13.3f}{after.get('nsfw_rate') or 0:>8.3f}"
              f"{before.get('watermark_rate') or 0:>14.3f}{after.get('watermark_rate') or 0:>8.3f}"
              f"{info['count']:>8}{info['recall_at_10']:>11.3f}")
    if lake.exists(EVALUATION_PATH):
        print("\nAgainst the crawl's ground truth:\n")
        print(format_tables(lake.read_json(EVALUATION_PATH)))


def cmd_gc(args: argparse.Namespace) -> None:
    from resources.lake import LakeResource

    lake = LakeResource(root=args.lake)
    retired = lake.glob("retired/shards/*")
    lake.remove("retired", recursive=True)
    print(json.dumps({"deleted": retired}, indent=2))


def cmd_summary(args: argparse.Namespace) -> None:
    print_summary(args.lake)


def cmd_query(args: argparse.Namespace) -> None:
    from resources.catalog import SqlLimits, open_catalog
    from resources.lake import LakeResource

    limits = SqlLimits(args.memory_limit, args.max_temp_size, args.timeout)
    catalog = open_catalog(LakeResource(root=args.lake), model_id(args.model, _pretrained(args)), limits=limits)
    try:
        table = catalog.select(args.sql)  # untrusted: one SELECT, on a connection that reads only the lake
    finally:
        catalog.close()
    rows = table.to_pylist()
    if args.json:
        json.dump(rows, sys.stdout, default=str)
        sys.stdout.write("\n")
        return
    writer = csv.writer(sys.stdout)
    writer.writerow(table.column_names)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row.values()])


def cmd_evaluate(args: argparse.Namespace) -> None:

    from assets.evaluation import EVALUATION_PATH, evaluate, format_tables, head_kinds, read_truth
    from assets.preference.evaluation import evaluate_preference, read_candidate_truth
    from assets.subsets import calibrated_params, load_policies
    from resources.catalog import open_catalog
    from resources.clip_model import ClipModelResource
    from resources.heads import HeadsResource
    from resources.lake import LakeResource
    from resources.preference import PreferenceResource, calibrated_rules

    lake = LakeResource(root=args.lake)
    pretrained = _pretrained(args)
    clip = ClipModelResource(model_name=args.model, pretrained=pretrained)
    catalog = open_catalog(lake, clip.model_id)
    truth = read_truth(args.truth)
    try:
        result = evaluate(catalog, truth, load_policies(), calibrated_params(pretrained),
                          head_kinds(lake, clip.model_id, HeadsResource(), clip))
        result["preference"] = evaluate_preference(catalog, truth, read_candidate_truth(args.truth),
                                                   PreferenceResource().rules(calibrated_rules(pretrained)))
    finally:
        catalog.close()
    print(format_tables(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    else:
        lake.write_json(EVALUATION_PATH, result)
    print(f"\nwritten to {args.json_out or lake.path(EVALUATION_PATH)}")


def cmd_export(args: argparse.Namespace) -> None:
    from assets import export
    from resources.catalog import open_catalog
    from resources.crawl import CrawlResource
    from resources.lake import LakeResource, committed_subset, subset_versions_dir

    lake = LakeResource(root=args.lake)
    record = committed_subset(lake, args.subset)
    if record is None:
        rejected = [r for path in lake.glob(f"{subset_versions_dir(args.subset)}/*/checks.json")
                    for r in lake.read_json(path).items() if not r[1]["passed"] and r[1].get("blocking")]
        why = ("; its candidates failed blocking checks: " + _check_reasons(dict(rejected))) if rejected else ""
        raise ValueError(f"no committed subset {args.subset!r} in {args.lake}{why}")
    if "checks" not in record:
        raise ValueError(f"subset {args.subset!r} carries no check results (written by an older clipsieve): "
                         f"materialize {args.subset}_subset again before exporting it")
    failed = {name: r for name, r in record["checks"].items() if not r["passed"]}
    blocking = {name: r for name, r in failed.items() if r.get("blocking", True)}
    if blocking:
        raise ValueError(f"subset {args.subset!r} failed its blocking checks, not exporting: "
                         f"{_check_reasons(blocking)}")
    for name, r in failed.items():
        print(f"warning: subset {args.subset!r} check {name} = {r['value']} ({r['kind']} {r['bound']}): "
              f"{r['what']}", file=sys.stderr)
    out = Path(args.out)
    # The original files: from --crawl, else from the crawl the members' shards were read from
    # (needed for webdataset; for any format, the export never writes into it).
    crawl = args.crawl
    if not crawl:
        try:
            crawl = export.recorded_crawl(lake, args.subset)
        except ValueError:
            if args.format == "webdataset":
                raise
    protected = {"lake": lake.url, **({"crawl": CrawlResource(root=crawl).url} if crawl else {})}
    export.prepare_output(out, args.overwrite, protected)  # before anything is written
    if args.format == "uids":
        paths = [export.export_uids(lake, args.subset, out)]
    elif args.format == "parquet":
        catalog = open_catalog(lake, model_id(args.model, _pretrained(args)))
        try:
            paths = [export.export_parquet(catalog, args.subset, out)]
        finally:
            catalog.close()
    else:
        paths = export.export_webdataset(lake, CrawlResource(root=crawl), args.subset, out, args.samples_per_shard)
    export.write_manifest(out)
    for path in paths:
        print(path)


def cmd_export_pairs(args: argparse.Namespace) -> None:
    from assets import export
    from assets.preference import export as pairs_export
    from resources.catalog import open_catalog
    from resources.crawl import CrawlResource
    from resources.lake import LakeResource

    lake = LakeResource(root=args.lake)
    out = Path(args.out)
    protected = {"lake": lake.url, **({"crawl": CrawlResource(root=args.crawl).url} if args.crawl else {})}
    catalog = open_catalog(lake, model_id(args.model, _pretrained(args)))
    try:
        rows = pairs_export.pair_rows(catalog, args.prompt)
    finally:
        catalog.close()
    export.prepare_output(out, args.overwrite, protected)  # before anything is written
    paths = pairs_export.export_files(rows, out)
    if args.crawl:
        paths += pairs_export.export_webdataset(rows, CrawlResource(root=args.crawl), out, args.samples_per_shard)
    export.write_manifest(out)
    print(f"{rows.num_rows} pairs of {len(set(rows.column('key').to_pylist()))} images")
    for path in paths:
        print(path)


def _check_reasons(results: dict[str, dict]) -> str:
    return "; ".join(f"{name} = {r['value']} ({r['kind']} {r['bound']})" for name, r in results.items())


def cmd_search(args: argparse.Namespace) -> None:
    from assets.indices import encode_query, search
    from resources.catalog import open_catalog, read_sql
    from resources.clip_model import ClipModelResource
    from resources.indexing import read_index
    from resources.lake import LakeResource, committed_subset, index_dir

    lake = LakeResource(root=args.lake)
    clip = ClipModelResource(model_name=args.model, pretrained=_pretrained(args))
    folder = index_dir(args.subset, clip.model_id)
    if not lake.exists(f"{folder}/index_info.json"):
        raise ValueError(f"no index for subset {args.subset!r} and model {clip.model_id} in {args.lake}: "
                         f"materialize {args.subset}_index first")
    if args.image:
        query = encode_query(clip.load(), image=Path(args.image).read_bytes())
    elif args.text:
        query = encode_query(clip.load(), text=args.text)
    else:
        raise ValueError("give a text to search for, or --image PATH")
    info = lake.read_json(f"{folder}/index_info.json")
    committed = (committed_subset(lake, args.subset) or {}).get("version")
    if info.get("subset_version") != committed:
        raise ValueError(f"the index of {args.subset!r} covers another version of the subset "
                         f"({info.get('subset_version')}) than the committed one ({committed}): "
                         f"materialize {args.subset}_index")
    index, keys = read_index(lake, folder, info)
    (hits,) = search(index, keys, query, args.k)
    catalog = open_catalog(lake, clip.model_id)
    try:
        captions = {r["key"]: r["caption"] for r in catalog.query(
            read_sql("lineage/captions.sql"), {"keys": [k for k, _ in hits]}).to_pylist()}
    finally:
        catalog.close()
    rows = [{"key": key, "score": round(score, 4), "caption": captions.get(key)} for key, score in hits]
    if args.json:
        print(json.dumps(rows))
        return
    for row in rows:
        print(f"{row['key']}  {row['score']:.4f}  {row['caption']}")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from assets.subsets import POLICY_DIR
    from orchestration.serve.app import create_app
    from orchestration.serve.service import SearchService, ServiceSettings
    from resources.clip_model import ClipModelResource
    from resources.crawl import CrawlResource
    from resources.lake import LakeResource

    pretrained = _pretrained(args)
    clip = ClipModelResource(model_name=args.model, pretrained=pretrained)
    policy_dir = Path(args.policy_dir or os.environ.get("CLIPSIEVE_POLICY_DIR") or POLICY_DIR)
    cache_dir = Path(args.cache_dir or Path.home() / ".cache" / "clipsieve" / "serve")
    settings = ServiceSettings(fetch_image_urls=args.fetch_image_urls)
    service = SearchService(LakeResource(root=args.lake), clip.load(), clip.model_id, policy_dir, cache_dir,
                            pretrained, CrawlResource(root=args.crawl) if args.crawl else None, settings)
    for name, why in service.unavailable.items():
        print(f"not served: {name}: {why}", file=sys.stderr)
    print(f"serving {', '.join(service.indices_list()) or 'no index'} on http://{args.host}:{args.port}/",
          flush=True)
    try:
        uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning")
    finally:
        service.close()


def cmd_heads_import(args: argparse.Namespace) -> None:
    from resources.head_import import import_head

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors: {out}")
    head, metadata = import_head(args.kind, args.file, args.column, args.activation, args.hidden_activation)
    out.parent.mkdir(parents=True, exist_ok=True)
    head.save(out, metadata)
    variable = {"punsafe": "CLIPSIEVE_NSFW_HEAD", "pwatermark": "CLIPSIEVE_WATERMARK_HEAD",
                "aesthetic": "CLIPSIEVE_AESTHETIC_HEAD", "ptext": "CLIPSIEVE_TEXT_IN_IMAGE_HEAD"}[metadata["output"]]
    print(json.dumps({"out": str(out), "column": metadata["output"], "input_dim": head.input_dim,
                      "sizes": [head.input_dim] + [layer.out_features for layer in head.layers],
                      "hidden_activation": head.hidden_activation, "activation": head.activation,
                      "use_with": f"{variable}={out.resolve()}"}, indent=2))


def cmd_heads_show(args: argparse.Namespace) -> None:
    from resources.clip_model import ClipModelResource
    from resources.heads import HEADS, HeadsResource

    clip = ClipModelResource(model_name=args.model, pretrained=_pretrained(args))
    heads = HeadsResource(kind=args.kind)
    dim = clip.embedding_dim
    print(json.dumps({"model_id": clip.model_id, "embedding_dim": dim,
                      **{name: heads.choose(name, dim).metadata() for name in HEADS}}, indent=2))


def _existing_instance(lake: str):
    """The instance the runs were recorded in ($DAGSTER_HOME, else <lake>/_dagster), if any."""
    from dagster import DagsterInstance

    home = os.environ.get("DAGSTER_HOME") or str(Path(lake, "_dagster"))
    return DagsterInstance.from_config(home) if os.path.isdir(home) else None


def cmd_explain(args: argparse.Namespace) -> None:
    from assets.subsets import calibrated_params, load_policies
    from orchestration.lineage import explain
    from resources.catalog import open_catalog
    from resources.lake import LakeResource

    pretrained = _pretrained(args)
    catalog = open_catalog(LakeResource(root=args.lake), model_id(args.model, pretrained))
    try:
        result = explain(catalog, args.key, load_policies(), calibrated_params(pretrained),
                         _existing_instance(args.lake), LakeResource(root=args.lake), model_id(args.model, pretrained))
    finally:
        catalog.close()
    print(json.dumps(result, indent=2, default=str))


def cmd_lineage(args: argparse.Namespace) -> None:
    from orchestration.lineage import subset_lineage
    from resources.catalog import open_catalog
    from resources.lake import LakeResource

    catalog = open_catalog(LakeResource(root=args.lake), model_id(args.model, _pretrained(args)))
    try:
        result = subset_lineage(catalog, args.subset, _existing_instance(args.lake))
    finally:
        catalog.close()
    print(json.dumps(result, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipsieve", description="Curate image-text data with Dagster.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("sample-crawl", help="write the synthetic img2dataset crawl with planted defects")
    p.add_argument("out")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--samples-per-shard", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=None,
                   help="clean images at SIZE x SIZE (img2dataset's default is 256) instead of 112-192 px sides")
    p.add_argument("--near-duplicate-share", type=float, default=0.03,
                   help="share of near-duplicate rows (default 0.03 like every defect; LAION-2B's is about 0.3)")
    p.set_defaults(func=cmd_sample_crawl)

    p = commands.add_parser("materialize", help="register the crawl's shards and materialize every asset")
    p.add_argument("--crawl", required=True, help="img2dataset output folder or fsspec URL")
    p.add_argument("--lake", required=True, help="output folder or fsspec URL")
    p.add_argument("--shards", help="comma-separated shards to run the per-shard assets of (default: every "
                                    "complete shard); processes given disjoint shards may share a lake and instance")
    p.add_argument("--no-cross-shard", action="store_true",
                   help="only the per-shard assets; a later materialize runs the cross-shard ones")
    p.add_argument("--in-process", action="store_true",
                   help="execute the runs in this process instead of launching them through the instance's "
                        "run launcher (what a laptop or a test needs; Dagster still decides what is stale)")
    p.add_argument("--flyt", action="store_true",
                   help="also materialize the flyt group: train the FLYT scorer (minutes on a CPU), score every "
                        "shard with it, and the policies that read flyt_scores")
    _model_args(p)
    p.set_defaults(func=cmd_materialize)

    p = commands.add_parser("proxy", help="the downstream proxy: train a small CLIP from scratch on each subset "
                                          "(and a random half of the pool) and report zero-shot accuracy")
    p.add_argument("--lake", required=True)
    p.add_argument("--crawl", required=True, help="the crawl the lake was read from (the images)")
    p.add_argument("--policies", help="comma-separated subsets (default: every materialized one, and random_half)")
    # Defaults (None here) are assets/downstream_proxy.py's, printed above the table: importing
    # it would load torch for every command.
    p.add_argument("--steps", type=int, help="training steps per subset and seed (default: the proxy's budget)")
    p.add_argument("--batch", type=int, help="pairs per step (default: the proxy's budget)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: the proxy's)")
    p.add_argument("--seeds", help="comma-separated: one training run per seed (default: 0,1)")
    p.add_argument("--heldout", help="a held-out downstream set (default: generated scenes, seed 6000)")
    p.add_argument("--heldout-samples", type=int, help="how many generated scenes, when no --heldout is given")
    p.add_argument("--json-out", help="write the JSON here instead of <lake>/proxy/metrics.json")
    _model_args(p)
    p.set_defaults(func=cmd_proxy)

    p = commands.add_parser("downstream-data", help="write labelled scenes (colour and shape classes) as a "
                                                    "downstream set for FLYT and the downstream proxy")
    p.add_argument("out", help="the Parquet file to write")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=5000,
                   help="5000: FLYT's training set; 6000: the proxy's held-out set (the crawl uses 0)")
    p.set_defaults(func=cmd_downstream_data)

    p = commands.add_parser("query", help="run SQL against the catalog views (samples, scores, ...)")
    p.add_argument("--lake", required=True)
    p.add_argument("--json", action="store_true", help="print a JSON array of row objects instead of CSV")
    p.add_argument("--timeout", type=float, default=600.0, help="stop the query after this many seconds")
    p.add_argument("--memory-limit", default="4GB", help="DuckDB memory_limit for the query")
    p.add_argument("--max-temp-size", default="16GB", help="spill space (a private folder, removed after)")
    _model_args(p)
    p.add_argument("sql")
    p.set_defaults(func=cmd_query)

    p = commands.add_parser("evaluate", help="measure filters and policies against a ground-truth file")
    p.add_argument("--lake", required=True)
    p.add_argument("--truth", required=True, help="ground_truth.parquet (key, shard, defect)")
    p.add_argument("--json-out", help="write the JSON here instead of <lake>/evaluation/metrics.json")
    _model_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("export", help="write a subset as DataComp uids, parquet or webdataset shards")
    p.add_argument("--lake", required=True)
    p.add_argument("--subset", required=True, help="policy name")
    p.add_argument("--format", required=True, choices=["uids", "parquet", "webdataset"])
    p.add_argument("--out", required=True)
    p.add_argument("--crawl", default=os.environ.get("CLIPSIEVE_CRAWL"),
                   help="the crawl (webdataset format; default: the one the lake recorded reading the members from)")
    p.add_argument("--samples-per-shard", type=int, default=10_000)
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds an earlier export: remove what it wrote first (anything else there is refused)")
    _model_args(p)
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("export-pairs", help="write the preference pairs in TRL's DPO format (JSONL, Parquet, "
                                                 "and with --crawl webdataset shards with the images)")
    p.add_argument("--lake", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--crawl", default=None, help="the crawl: also write webdataset shards with each pair's image")
    p.add_argument("--prompt", default="Describe the image.", help="the prompt column: what the captions answer")
    p.add_argument("--samples-per-shard", type=int, default=10_000)
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds an earlier export: remove what it wrote first (anything else there is refused)")
    _model_args(p)
    p.set_defaults(func=cmd_export_pairs)

    p = commands.add_parser("search", help="kNN search of a subset's index by text or by image")
    p.add_argument("--lake", required=True)
    p.add_argument("--subset", required=True, help="policy name")
    p.add_argument("text", nargs="?", help="text to search for (text -> image)")
    p.add_argument("--image", help="image file to search with (image -> image)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print a JSON array of {key, score, caption}")
    _model_args(p)
    p.set_defaults(func=cmd_search)

    p = commands.add_parser("serve", help="search service (clip-retrieval's back, compatible) and web page")
    p.add_argument("--lake", required=True)
    p.add_argument("--crawl", help="the crawl the lake was read from: results carry their images")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=1234)
    p.add_argument("--policy-dir", help="policy folder, where 'save as policy' writes "
                                        "(default: $CLIPSIEVE_POLICY_DIR or sql/policies)")
    p.add_argument("--cache-dir", help="local folder for the index tables (default: ~/.cache/clipsieve/serve)")
    p.add_argument("--fetch-image-urls", action="store_true",
                   help="allow image_url queries (the server then fetches any URL a client sends)")
    _model_args(p)
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("explain", help="one sample's crawl row, scores, policy decisions and runs")
    p.add_argument("--lake", required=True)
    p.add_argument("key")
    _model_args(p)
    p.set_defaults(func=cmd_explain)

    p = commands.add_parser("lineage", help="the shards, model, SQL and runs behind a subset")
    p.add_argument("--lake", required=True)
    p.add_argument("--subset", required=True)
    _model_args(p)
    p.set_defaults(func=cmd_lineage)

    p = commands.add_parser("heads", help="import published heads; show which head each score uses")
    heads = p.add_subparsers(dest="heads_command", required=True)
    h = heads.add_parser("import", help="convert a published head (a PyTorch state dict) to a safetensors head")
    h.add_argument("kind", choices=["laion-aesthetic-v1", "laion-aesthetic-v2", "mlp"],
                   help="laion-aesthetic-v1: sa_0_4_vit_*_linear.pth; laion-aesthetic-v2: "
                        "sac+logos+ava1-l14-linearMSE.pth; mlp: Linear layers in key order, activations as stated")
    h.add_argument("file", help="the downloaded .pth / .pt / .bin / .safetensors file (read with weights_only)")
    h.add_argument("--out", required=True, help="HEAD.safetensors to write")
    h.add_argument("--column", choices=["punsafe", "pwatermark", "aesthetic", "ptext"],
                   help="the score it gives (required for mlp; aesthetic for the LAION kinds)")
    h.add_argument("--activation", choices=["sigmoid", "identity"],
                   help="at the output: sigmoid for a probability (mlp default), identity for a rating")
    h.add_argument("--hidden-activation", choices=["relu", "gelu", "silu", "tanh", "identity"],
                   help="between layers (mlp default: relu; the LAION kinds have none)")
    h.set_defaults(func=cmd_heads_import)
    h = heads.add_parser("show", help="which head (file or zero-shot) gives each score for a model")
    h.add_argument("--kind", default="auto", choices=["auto", "file", "zero_shot"])
    _model_args(h)
    h.set_defaults(func=cmd_heads_show)

    p = commands.add_parser("gc", help="delete the lake files of shards that left the crawl (retired/)")
    p.add_argument("--lake", required=True)
    p.set_defaults(func=cmd_gc)

    p = commands.add_parser("summary", help="print each policy's subset, index and audit figures")
    p.add_argument("--lake", required=True)
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "subset", None) is not None:
            check_policy_name(args.subset)  # it becomes a path in the lake and in export folders
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, duckdb.Error) as error:
        raise SystemExit(f"clipsieve: {error}") from None


def entry_point() -> None:
    """The `clipsieve` command: main(), then exit without tearing the interpreter down.

    The teardown alone takes about 1.2 s once torch is imported (measured on the 2-core
    machine: `python -c "import torch"` 2.5 s, 1.3 s when it ends with os._exit), more than
    some commands' own work. When main() returns or exits, every lake file it wrote is
    closed and renamed into place and every run event is committed, so only the standard
    streams and the log handlers are flushed before leaving. An unexpected exception
    takes the normal way out, with its traceback.
    """
    try:
        main()
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry_point()
