"""report.html: one self-contained page per audit, plots inline as SVG (assets/audits/charts.py)."""

import html
from typing import Any

from assets.audits import charts


def _img(svg: str) -> str:
    return f"<figure>{svg}</figure>"


def _quantile_plot(metrics: dict[str, Any], name: str, title: str) -> str:
    series = {side: metrics["distributions"][side][name] for side in ("before", "after")
              if metrics["distributions"][side].get(name)}
    return charts.lines(title, metrics["distributions"]["quantiles"], series, "quantile")


def _skew_plot(bias: dict[str, Any]) -> str:
    prompts = bias["prompts"]
    series = {group: [p["skews"][group] for p in prompts] for group in bias["target"]}
    return charts.horizontal_bars([p["prompt"] for p in prompts], series,
                                  f"skew = ln(share in top {bias['k']} / share in subset)")


def _table(rows: list[list[Any]], header: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return html.escape("–" if value is None else str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_report(metrics: dict[str, Any]) -> str:
    """The audit as an HTML page with its plots inline."""
    before, after = metrics["before"], metrics["after"]
    rate_names = ["nsfw_rate", "nsfw_rate_p90", "watermark_rate", "toxic_rate", "exact_duplicate_rate",
                  "near_duplicate_rate"]
    sections = [
        f"<h1>Audit of <code>{html.escape(metrics['policy'])}</code></h1>",
        f"<p>Model <code>{html.escape(str(metrics.get('model_id')))}</code>. Kept {after['samples']} of "
        f"{before['samples']} scored samples ({metrics['kept_share']:.1%}); the crawl had "
        f"{metrics['crawl']['crawl_rows']} rows, of which {metrics['crawl']['failed_download']} failed downloads "
        f"and {metrics['crawl']['corrupt_image']} corrupt images.</p>",
        "<h2>Rates</h2>",
        _table([[n, before.get(n), after.get(n)] for n in ["samples", *rate_names, "english_rate",
                                                            "mean_similarity"]], ["metric", "before", "after"]),
        f"<p>Toxic captions, Wilson 95% interval: before {before['toxic_rate_ci95'][0]:.4f}–"
        f"{before['toxic_rate_ci95'][1]:.4f}, after {after['toxic_rate_ci95'][0]:.4f}–"
        f"{after['toxic_rate_ci95'][1]:.4f}.</p>",
        _img(charts.paired_bars("Rates", rate_names, [before.get(n) or 0 for n in rate_names],
                                [after.get(n) or 0 for n in rate_names])),
        "<h2>Distributions</h2>",
        _img(_quantile_plot(metrics, "similarity", "CLIP similarity quantiles")),
        _img(_quantile_plot(metrics, "caption_chars", "Caption length (characters) quantiles")),
    ]
    languages = sorted(metrics["languages"]["before"].items(), key=lambda kv: -kv[1])[:8]
    sections.append(_img(charts.paired_bars("Language shares", [lang for lang, _ in languages],
                                            [share for _, share in languages],
                                            [metrics["languages"]["after"].get(lang, 0) for lang, _ in languages])))
    concepts = metrics["distributions"]["concepts"]
    sections.append(_table([[k, concepts["before"][k], concepts["after"][k]] for k in concepts["before"]],
                           ["MetaCLIP concept coverage", "before", "after"]))
    groups = metrics["representation"]["groups"]
    sections += [
        "<h2>Representation</h2>",
        _table([[g, f["before"], f["after"], f["share_before"], f["share_after"], f["removal_rate"],
                 f["removal_ratio"]] for g, f in groups.items()],
               ["group", "before", "after", "share before", "share after", "removal rate", "removal ratio"]),
    ]
    if groups:
        sections.append(_img(charts.paired_bars("Caption group shares", list(groups),
                                                [f["share_before"] for f in groups.values()],
                                                [f["share_after"] for f in groups.values()])))
    if metrics.get("retrieval_bias", {}).get("prompts"):
        bias = metrics["retrieval_bias"]
        sections += [
            "<h2>Retrieval bias</h2>",
            f"<p>Mean MaxSkew@{bias['k']}: {bias['mean_max_skew']:.3f}; mean NDKL: {bias['mean_ndkl']:.3f}. "
            "Target shares are the subset's.</p>",
            _img(_skew_plot(bias)),
        ]
    if "association" in metrics:
        association = metrics["association"]
        words = association["words"]
        sections += [
            "<h2>Association (WEAT)</h2>",
            f"<p>X = {html.escape(', '.join(words['x']))}; Y = {html.escape(', '.join(words['y']))}; "
            f"A = {html.escape(', '.join(words['a']))}; B = {html.escape(', '.join(words['b']))}. "
            "Cross-modal: the members' images by caption group against the attribute words.</p>",
            _table([[space, r["effect_size"], r["p_value"], r["x"], r["y"]]
                    for space, r in association.items() if space != "words"],
                   ["space", "effect size d", "p-value", "|X|", "|Y|"]),
        ]
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#1f2328}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #d0d7de;padding:4px 8px;"
             "text-align:right}th{background:#f6f8fa}figure{margin:1em 0}figure svg{max-width:100%;height:auto}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Audit: {html.escape(metrics['policy'])}"
            f"</title><style>{style}</style></head><body>{''.join(sections)}</body></html>")
