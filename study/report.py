"""The study's report: Markdown with PNG figures, and every number as a Parquet file.

    out/report.md          what a reader opens
    out/figures/*.png      CKA heatmaps (normalized depth on both axes), the sink norm profile
    out/data/*.parquet     the tables behind every figure and table; query them with DuckDB:
                           SELECT * FROM 'out/data/matched_depth.parquet' WHERE estimator = 'debiased'

The report states what the numbers are, not what they should be: a value at or under its
permutation null is printed as such.
"""
from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vindex.files import atomic_write_bytes

from .analyses import DEPTH_BANDS, band_name
from .causal_report import causal_figure, causal_section, causal_summary_lines
from .markdown import fmt, md_table

# every table the report writes to out/data, with what one row is
DATA_TABLES = {
    "models": "one row per model: vindex path, model id, layers, width, activation dtype, feature vectors",
    "cka_matrix": "CKA of every layer pair (pair, pooling, estimator); no null",
    "cka_depth": "per layer of model_a: CKA at matched normalized depth, permutation null, off-diagonal mean",
    "matched_depth": "the matched-depth table: per depth band, CKA, null p95, p-value, off-diagonal mean",
    "depth_correspondence": "Spearman rho of each layer's depth vs the depth of its best match in the other model",
    "mutual_knn": "mutual k-NN alignment at matched depth, with chance level k/(n-1)",
    "measure_depth": "measures beyond CKA (Procrustes, shape metric, SVCCA, PWCCA, RSA, CKNNA) at matched depth, with nulls",
    "measure_agreement": "Spearman rho between measures' matched-depth profiles (do they agree which layers correspond?)",
    "category_cka": "CKA at matched depth over the prompts of one category, with its null",
    "last_token_cka": "last-token CKA over prompts that end in the same token (identity control), with null",
    "ending_tokens": "each prompt's last content token per model, as tokenized and normalised",
    "sink_profile": "hidden-state norm by token position and layer (specials, content 0, 1, 2, 3+)",
    "clustering": "k-means of labelled feature vectors vs lexicon categories: NMI/AMI with nulls",
    "feature_labels": "every labelled FFN feature: model, layer, feature, top token, category",
    "influence_prompts": "every prompt's leave-one-out influence on CKA at each pair's peak matched-depth layers",
    "influence_categories": "mean influence per prompt category at the peak, with its label-permutation null",
    "influence_traits": "do the prompts that pull CKA down most share a trait: the tests and their p-values",
    "stages": "each model's layers cut into stages (count chosen, and four given) with the count's support",
    "causal_profile": "mean restoration per model, position (subject, last) and layer, with its 95% bootstrap interval",
    "causal_peaks": "per model: the depth of peak restoration, its bootstrap interval and resamples, the entity band",
    "causal_tests": "the causal verdicts: peak in the entity band, across models, at the CKA peak; the claim",
}


# -- formatting ----------------------------------------------------------------------------------
def fmt_p(p, permutations: int | None = None) -> str:
    """p-values: '<= 0.01' at the resolution limit of 99 permutations, else two digits."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    if permutations and p <= 1 / (permutations + 1) + 1e-12:
        return f"<= {1 / (permutations + 1):.2g}"
    return f"{p:.2f}"


def _p_bound(p, permutations) -> str:
    """'<= 0.01' for the largest p of a set (every member is at least that significant)."""
    text = fmt_p(p, permutations)
    return text if text.startswith("<=") or text == "-" else f"<= {text}"


def verdict(cka, null_p95, p, alpha: float = 0.05) -> str:
    if cka is None or null_p95 is None or p is None:
        return "-"
    return "above null" if (cka > null_p95 and p <= alpha) else "**not above null**"


# -- files ---------------------------------------------------------------------------------------
def write_tables(data_dir: Path, tables: dict[str, pa.Table]) -> list[Path]:
    """Write each table as data/<name>.parquet (atomically: a reader never sees half a file)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, t in tables.items():
        if t is None:
            continue
        sink = pa.BufferOutputStream()
        pq.write_table(t, sink, compression="zstd")
        path = data_dir / f"{name}.parquet"
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        out.append(path)
    return out


def heatmaps(fig_dir: Path, matrices: pa.Table) -> dict[tuple, Path]:
    """One CKA heatmap per (pair, pooling, estimator), through vindex.query.plot."""
    from vindex.query.plot import heatmap

    fig_dir.mkdir(parents=True, exist_ok=True)
    keys = []
    cols = matrices.select(["model_a", "model_b", "pooling", "estimator"]).to_pylist()
    for r in cols:
        k = (r["model_a"], r["model_b"], r["pooling"], r["estimator"])
        if k not in keys:
            keys.append(k)
    import pyarrow.compute as pc
    paths = {}
    for a, b, p, e in keys:
        mask = pc.and_(pc.and_(pc.equal(matrices["model_a"], a), pc.equal(matrices["model_b"], b)),
                       pc.and_(pc.equal(matrices["pooling"], p), pc.equal(matrices["estimator"], e)))
        path = fig_dir / f"cka_{a}__{b}__{p}__{e}.png"
        paths[(a, b, p, e)] = heatmap(matrices.filter(mask), path,
                                      title=f"{e} linear CKA, {p} pooling\n{a} vs {b}")
    return paths


def sink_figure(fig_dir: Path, profile: pa.Table) -> Path | None:
    """Mean hidden-state norm against normalized depth, one line per token position, one panel per model."""
    if profile.num_rows == 0:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    rows = profile.to_pylist()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.2), dpi=110, squeeze=False)
    for ax, m in zip(axes[0], models):
        for colour, pos in zip(("black", "tab:red", "tab:orange", "tab:green", "tab:blue"),
                               ("special", "content 0", "content 1", "content 2", "content 3+")):
            pts = sorted((r["depth"], r["mean_norm"]) for r in rows if r["model"] == m and r["position"] == pos)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker=".", lw=1, color=colour,
                        label=pos if pos != "special" else "special (BOS, ...)")
        ax.set_yscale("log")
        ax.set_xlabel("normalized depth")
        ax.set_ylabel("mean hidden-state L2 norm")
        ax.set_title(m, fontsize=9)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("attention sinks: per-position norm profile", fontsize=9)
    fig.tight_layout()
    path = fig_dir / "sink_norms.png"
    fig.savefig(path)
    plt.close(fig)
    return path


# -- the Markdown --------------------------------------------------------------------------------
def _where(t: pa.Table | None, **eq) -> list[dict]:
    if t is None or t.num_rows == 0:
        return []
    return [r for r in t.to_pylist() if all(r.get(k) == v for k, v in eq.items())]


def summary_lines(res: dict[str, pa.Table], ctx: dict) -> list[str]:
    """The figures `vindex study` prints and README quotes: one block per model pair."""
    lines = []
    perms = ctx["permutations"]
    for a, b in ctx["pairs"]:
        lines.append(f"{a} vs {b}:")
        for pooling in ctx["poolings"]:
            for est in ctx["estimators"]:
                band_rows = _where(res["matched_depth"], model_a=a, model_b=b, pooling=pooling, estimator=est)
                if not band_rows:
                    continue
                cka = " ".join(f"{r['band']}={fmt(r['cka'])}" for r in band_rows)
                nul = max((r["null_p95"] for r in band_rows if r["null_p95"] is not None), default=None)
                pv = max((r["p_value"] for r in band_rows if r["p_value"] is not None), default=None)
                rho = _where(res["depth_correspondence"], model_a=a, model_b=b, pooling=pooling, estimator=est,
                             direction="a->b")
                rho_s = fmt(rho[0]["spearman_rho"]) if rho else "-"
                lines.append(f"  {pooling:<12} {est:<9} matched-depth CKA {cka}; null p95 <= {fmt(nul)}; "
                             f"p {_p_bound(pv, perms)}; depth rho {rho_s}")
    for r in res["clustering"].to_pylist() if res.get("clustering") is not None else []:
        if r.get("scope") == "all layers":
            if r.get("status") == "ok":
                lines.append(f"concepts {r['model']}: NMI {fmt(r['nmi'])} (null p95 {fmt(r.get('nmi_null_p95'))}), "
                             f"AMI {fmt(r['ami'])} (null p95 {fmt(r.get('ami_null_p95'))}, "
                             f"p {fmt_p(r.get('ami_p'), perms)}), {r['n_labelled']} labelled features")
            else:
                lines.append(f"concepts {r['model']}: {r.get('status')}")
    return lines + causal_summary_lines(res)


def render(res: dict[str, pa.Table], ctx: dict, figures: dict) -> str:
    """The report's Markdown text."""
    perms = ctx["permutations"]
    P = ctx["poolings"]
    primary = P[0]
    md = [f"# vindex study: {', '.join(ctx['models'])}", ""]
    md.append("Do independently trained models represent the same prompts alike at matched normalized depth, "
              "and is that above chance? Linear CKA between every pair of layers over "
              f"{ctx['n_prompts']} prompts (prompt set `{ctx['prompt_set']}`), with a permutation null "
              f"({perms} shuffles of one side's prompt rows), a second measure (mutual k-NN), per-category "
              "results, concept clustering of FFN features, and the confounds that inflate or deflate CKA.")
    md += ["", f"Reproduce: `{ctx['command']}`", ""]
    md += ["## Summary", "", "```", *summary_lines(res, ctx), "```", ""]
    md += ["## Models", "", md_table(res["models"].to_pylist(), [
        ("model", "model"), ("model_id", "source"), ("family", "family"), ("n_layers", "blocks"),
        ("d_model", "width"), ("activation_dtype", "stored as"), ("feature_vectors", "feature vectors")]), ""]

    md += ["## CKA across layers", "",
           "Each heatmap is the CKA of every layer of one model (rows) with every layer of the other (columns); "
           "the top and right axes give normalized depth (layer / blocks) and the dashed line is matched depth. "
           "Pooling: `last` = the last content token, `mean_nosink` = mean over content tokens without the first "
           "(attention-sink) position, `mean` = mean over all content tokens.", ""]
    for (a, b, p, e), path in figures.get("heatmaps", {}).items():
        if p in P[:2]:
            md.append(f"![{e} CKA {a} vs {b}, {p}](figures/{path.name})")
    others = [path for (a, b, p, e), path in figures.get("heatmaps", {}).items() if p not in P[:2]]
    if others:
        md += ["", "Other poolings: " + ", ".join(f"[{p.stem}](figures/{p.name})" for p in others)]
    md.append("")

    md += ["## Matched depth", "",
           "Per depth band of the first model: mean CKA of each of its layers with the other model's layer at the "
           "nearest normalized depth (and the min-max over those layers), the largest permutation-null p95 and the largest "
           "p-value among those layers (so every pair in the band is at least that significant), and the mean "
           "CKA of the same layers with layers at least "
           f"{ctx['band']:.2f} away in depth (off-diagonal). With {perms} permutations the smallest possible "
           f"p is {1 / (perms + 1):.2g}." if perms else "Permutation null disabled (permutations=0).", ""]
    for a, b in ctx["pairs"]:
        for pooling in P:
            for est in ctx["estimators"]:
                rows = _where(res["matched_depth"], model_a=a, model_b=b, pooling=pooling, estimator=est)
                if not rows:
                    continue
                for r in rows:
                    r["range"] = f"{fmt(r['cka_min'])}-{fmt(r['cka_max'])}"
                    r["verdict"] = verdict(r["cka"], r["null_p95"], r["p_value"])
                    r["margin"] = None if r["off_diagonal"] is None else r["cka"] - r["off_diagonal"]
                md += [f"### {a} vs {b}: {pooling} pooling, {est} CKA", "", md_table(rows, [
                    ("band", "depth band"), ("layers_a", f"{a} layers"), ("layers_b", f"{b} layers"),
                    ("cka", "CKA"), ("range", "min-max"), ("null_p95", "null p95"), ("p_value", "p"),
                    ("verdict", ""), ("off_diagonal", f"off-diagonal (>= {ctx['band']:.2f})"),
                    ("margin", "diagonal - off")], {"p_value": lambda p: fmt_p(p, perms)}), ""]

    md += ["## Depth correspondence", "",
           "For each layer, the normalized depth of its best-matching layer (highest CKA) in the other model; "
           "Spearman rho between the two depths (1 = the layer order is preserved).", "",
           md_table(res["depth_correspondence"].to_pylist(), [
               ("model_a", "model a"), ("model_b", "model b"), ("pooling", "pooling"), ("estimator", "estimator"),
               ("direction", "best match"), ("n_layers", "layers"), ("spearman_rho", "Spearman rho")]), ""]

    md += ["## Mutual k-NN alignment", "",
           f"A second measure that is not CKA (Huh et al. 2024): the mean overlap of each prompt's {ctx['knn_k']} "
           f"nearest neighbours (cosine) in the two models, at matched depth, {primary} pooling. Chance = k/(n-1).", ""]
    knn_rows = _knn_bands(res["mutual_knn"])
    md += [md_table(knn_rows, [("model_a", "model a"), ("model_b", "model b"), ("band", "depth band"),
                               ("mutual_knn", "mutual k-NN"), ("min", "min"), ("max", "max"),
                               ("chance", "chance")]), ""]

    md += measure_section(res, ctx)
    md += convergence_section(res, ctx)
    md += stages_section(res, ctx)
    md += causal_section(res, ctx, figures.get("causal"))
    md += ["## Per-category CKA", "",
           f"CKA at matched depth over the prompts of one category only ({primary} pooling; the null shuffles "
           "within the category). Where a category falls to its null, convergence breaks down for that kind of "
           "input. Fewer prompts make the biased estimator more inflated: read the debiased rows.", ""]
    md += [CELL_LEGEND, "", _band_pivot(_group_bands(res["category_cka"], "grp"), "grp", "category", perms), ""]

    md += ["## Concept clustering", "",
           "FFN features labelled by the lexicon category of their down_meta top token (W_E . W_down[:, f], "
           "normalised for case and space markers); their stored feature vectors (see the Models table), "
           "L2-normalised, clustered by k-means with k = the number of categories present; NMI and AMI between "
           f"clusters and categories, with nulls from {perms} label shuffles over the same clusters. "
           f"Lexicon: {ctx['lexicon']}.", ""]
    md += [md_table(res["clustering"].to_pylist(), [
        ("model", "model"), ("scope", "layers"), ("n_features", "features"), ("n_labelled", "labelled"),
        ("n_categories", "k"), ("nmi", "NMI"), ("nmi_null_p95", "NMI null p95"), ("nmi_p", "p"),
        ("ami", "AMI"), ("ami_null_p95", "AMI null p95"), ("ami_p", "p"), ("status", "")],
        {"nmi_p": lambda p: fmt_p(p, perms), "ami_p": lambda p: fmt_p(p, perms),
         "status": lambda s: "" if s == "ok" else (s or "")}), ""]
    md += ["Labelled features per category:", "", _category_counts(res["feature_labels"]), ""]

    md += ["## Confounds", "", "### Attention sinks", "",
           "Mean hidden-state norm by token position (specials such as BOS, then content positions). A first "
           "content position with a norm far above the rest is an attention sink (models without a BOS token "
           "make their first real token one); plain mean pooling is then dominated by that one token.", ""]
    if figures.get("sinks"):
        md += [f"![sink norms](figures/{figures['sinks'].name})", ""]
    md += [md_table(_sink_rows(res["sink_profile"]), [
        ("model", "model"), ("layer", "layer"), ("depth", "depth"), ("special", "special"),
        ("content 0", "content 0"), ("content 1", "content 1"), ("content 3+", "content 3+"),
        ("ratio", "content 0 / content 3+")], {"special": lambda x: fmt(x, 0), "content 0": lambda x: fmt(x, 0),
                                                "content 1": lambda x: fmt(x, 0), "content 3+": lambda x: fmt(x, 0),
                                                "ratio": lambda x: fmt(x, 1)}), ""]
    md += ["CKA at matched depth with (`mean`) and without (`mean_nosink`) the sink position:", "",
           md_table(_compare_poolings(res["matched_depth"], "mean", "mean_nosink"), [
               ("model_a", "model a"), ("model_b", "model b"), ("estimator", "estimator"), ("band", "depth band"),
               ("mean", "mean"), ("mean_nosink", "mean_nosink"), ("diff", "difference")]), ""]

    md += ["### Last-token identity", ""]
    shares = ctx.get("ending_shares") or {}
    top = ", ".join(f"{tok!r} {s:.0%}" for tok, s in list(shares.items())[:5])
    md += [f"Most prompts end in the same few tokens ({top or 'none agreed'}), so last-token CKA at shallow "
           "depth partly measures token identity. Control: last-token CKA over only the prompts that end in "
           "the most common token (same token for every model), against all prompts. At the embedding layer "
           "the control is undefined (every row is the same vector).", "",
           CELL_LEGEND, "", _band_pivot(_control_rows(res, ctx["n_prompts"]), "grp", "prompts", perms), ""]

    md += ["### Estimator gap", "",
           "Biased CKA (Kornblith et al. 2019) is inflated at finite n, the more so the fewer prompts and the "
           "wider the layers; debiased CKA (unbiased HSIC, Song et al. 2012) is not, and can be negative.", "",
           md_table(_estimator_gap(res["matched_depth"]), [
               ("model_a", "model a"), ("model_b", "model b"), ("pooling", "pooling"), ("band", "depth band"),
               ("biased", "biased"), ("debiased", "debiased"), ("gap", "gap")]), ""]

    md += ["## Data", "", "Every number above is in `data/*.parquet` (DuckDB: "
           "`SELECT * FROM 'data/matched_depth.parquet'`):", ""]
    md += [f"- `data/{name}.parquet`: {what}" for name, what in DATA_TABLES.items()]
    md += ["", f"Settings: {ctx['settings']}", ""]
    return "\n".join(md)


CELL_LEGEND = ("Cells: CKA averaged over the band's matched layer pairs, with the largest null p95 in brackets; "
               "n.s. = not above the null (CKA <= null p95 or p > 0.05 for some pair in the band).")


def _band_pivot(rows: list[dict], key: str, header: str, perms: int) -> str:
    """One table row per (pair, estimator, group), one column per depth band."""
    bands = [band_name(lo, hi) for lo, hi in DEPTH_BANDS]
    table: dict[tuple, dict] = {}
    for r in rows:
        k = (r["model_a"], r["model_b"], r["estimator"], r[key], r["n"])
        t = table.setdefault(k, {"model_a": k[0], "model_b": k[1], "estimator": k[2], key: k[3], "n": k[4], "p": []})
        cell = "-" if r["cka"] is None else f"{r['cka']:.2f} ({fmt(r['null_p95'])})"
        if r["cka"] is not None and r["verdict"] != "above null":
            cell += " n.s."
        t[r["band"]] = cell
        if r["p_value"] is not None:
            t["p"].append(r["p_value"])
    out = list(table.values())
    for t in out:
        t["p"] = max(t["p"]) if t["p"] else None
    return md_table(out, [("model_a", "model a"), ("model_b", "model b"), ("estimator", "estimator"),
                          (key, header), ("n", "n")] + [(b, b) for b in bands] + [("p", "p (max)")],
                    {"p": lambda p: _p_bound(p, perms), **{b: (lambda x: x or "-") for b in bands}})


def _knn_bands(t: pa.Table) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in t.to_pylist():
        groups.setdefault((r["model_a"], r["model_b"], r["band"]), []).append(r)
    out = []
    for (a, b, band), rs in groups.items():
        v = [r["mutual_knn"] for r in rs if r["mutual_knn"] is not None]
        out.append({"model_a": a, "model_b": b, "band": band, "mutual_knn": sum(v) / len(v) if v else None,
                    "min": min(v, default=None), "max": max(v, default=None), "chance": rs[0]["chance"]})
    return out


def _group_bands(t: pa.Table | None, key: str) -> list[dict]:
    """Subset CKA rows averaged per depth band (p: the largest in the band)."""
    if t is None:
        return []
    groups: dict[tuple, list[dict]] = {}
    for r in t.to_pylist():
        groups.setdefault((r["model_a"], r["model_b"], r["estimator"], r[key], r["band"]), []).append(r)
    out = []
    for (a, b, e, g, band), rs in groups.items():
        c = [r["cka"] for r in rs if r["cka"] is not None]
        n95 = [r["null_p95"] for r in rs if r["null_p95"] is not None]
        pv = [r["p_value"] for r in rs if r["p_value"] is not None]
        row = {"model_a": a, "model_b": b, "estimator": e, key: g, "band": band, "n": rs[0]["n"],
               "cka": sum(c) / len(c) if c else None, "null_p95": max(n95, default=None),
               "p_value": max(pv, default=None)}
        row["verdict"] = verdict(row["cka"], row["null_p95"], row["p_value"])
        out.append(row)
    return out


def _category_counts(t: pa.Table | None) -> str:
    if t is None or t.num_rows == 0:
        return "_(no labelled features)_"
    counts: dict[str, dict[str, int]] = {}
    for r in t.to_pylist():
        counts.setdefault(r["category"], {}).setdefault(r["model"], 0)
        counts[r["category"]][r["model"]] += 1
    models = list(dict.fromkeys(r["model"] for r in t.to_pylist()))
    rows = [{"category": c, **v} for c, v in sorted(counts.items())]
    return md_table(rows, [("category", "category")] + [(m, m) for m in models])


def _sink_rows(t: pa.Table) -> list[dict]:
    """For each model, the layers nearest 25/50/75% depth: mean norm per position."""
    per: dict[tuple, dict] = {}
    for r in t.to_pylist():
        d = per.setdefault((r["model"], r["layer"]), {"model": r["model"], "layer": r["layer"], "depth": r["depth"]})
        d[r["position"]] = r["mean_norm"]
    out = []
    for m in dict.fromkeys(k[0] for k in per):
        layers = [v for k, v in per.items() if k[0] == m]
        for target in (0.25, 0.5, 0.75):
            row = min(layers, key=lambda v: abs(v["depth"] - target))
            if row not in out:
                ref = row.get("content 3+")
                row["ratio"] = row.get("content 0") / ref if ref and row.get("content 0") is not None else None
                out.append(row)
    return out


def _compare_poolings(t: pa.Table, p1: str, p2: str) -> list[dict]:
    out = []
    by = {(r["model_a"], r["model_b"], r["estimator"], r["band"], r["pooling"]): r["cka"] for r in t.to_pylist()}
    for (a, b, e, band, p), v in by.items():
        if p == p1 and (a, b, e, band, p2) in by:
            w = by[(a, b, e, band, p2)]
            out.append({"model_a": a, "model_b": b, "estimator": e, "band": band, p1: v, p2: w,
                        "diff": None if v is None or w is None else w - v})
    return out


def _control_rows(res, n_prompts=None) -> list[dict]:
    """Last-token CKA per band over all prompts (from the matched-depth table) and over the control subset."""
    rows = []
    for r in res["matched_depth"].to_pylist():
        if r["pooling"] == "last":
            rows.append({"model_a": r["model_a"], "model_b": r["model_b"], "estimator": r["estimator"],
                         "grp": "all prompts", "n": n_prompts, "band": r["band"], "cka": r["cka"],
                         "null_p95": r["null_p95"], "p_value": r["p_value"],
                         "verdict": verdict(r["cka"], r["null_p95"], r["p_value"])})
    return rows + _group_bands(res.get("last_token_cka"), "grp")


def _estimator_gap(t: pa.Table) -> list[dict]:
    by = {(r["model_a"], r["model_b"], r["pooling"], r["band"], r["estimator"]): r["cka"] for r in t.to_pylist()}
    out = []
    for (a, b, p, band, e), v in by.items():
        if e == "biased" and (a, b, p, band, "debiased") in by:
            w = by[(a, b, p, band, "debiased")]
            out.append({"model_a": a, "model_b": b, "pooling": p, "band": band, "biased": v, "debiased": w,
                        "gap": None if v is None or w is None else v - w})
    return out


def measure_section(res: dict, ctx: dict) -> list[str]:
    """"Do the measures agree?": each measure's matched-depth profile against its null, and the rank
    correlation between the measures' profiles."""
    prof, agree = res.get("measure_depth"), res.get("measure_agreement")
    if prof is None or prof.num_rows == 0:
        return []
    perms = ctx["permutations"]
    rows: dict[tuple, list[dict]] = {}
    for r in prof.to_pylist():
        rows.setdefault((r["model_a"], r["model_b"], r["measure"]), []).append(r)
    table = []
    for (a, b, m), rs in rows.items():
        v = [r["value"] for r in rs if r["value"] is not None]
        nul = [r["null_mean"] for r in rs if r["null_mean"] is not None]
        pv = [r["p_value"] for r in rs if r["p_value"] is not None]
        table.append({"model_a": a, "model_b": b, "measure": m, "value": sum(v) / len(v) if v else None,
                      "range": f"{fmt(min(v, default=None))}-{fmt(max(v, default=None))}",
                      "null_mean": sum(nul) / len(nul) if nul else None, "p": max(pv, default=None),
                      "dims": "; ".join(sorted({f"{r['dims_a']}/{r['dims_b']}" for r in rs if r["dims_a"] is not None})),
                      "capped": "yes" if any(r["note"] for r in rs) else ""})
    md = ["## Do the measures agree?", "",
          "Is CKA the right metric? Six other measures of the same matched-depth layer pairs "
          f"({ctx['poolings'][0]} pooling; `vindex.query.measures`, docs/sql.md \"Measures beyond CKA\"): "
          "Procrustes distance and the angular shape metric (Williams et al. 2021; lower = more alike), SVCCA "
          "(Raghu et al. 2017), PWCCA (Morcos et al. 2018), RSA (Kriegeskorte et al. 2008) and CKNNA (Huh et al. "
          f"2024), each with a null of {perms} shuffles of one side's prompt rows. SVCCA/PWCCA keep the top "
          "singular directions explaining 99% of the variance, capped at (n-1)/2 per side when a layer is at least "
          "as wide as the prompts are many (`capped`): their null mean shows how much CCA then finds by chance.", "",
          md_table(table, [("model_a", "model a"), ("model_b", "model b"), ("measure", "measure"),
                           ("value", "mean over layers"), ("range", "min-max"), ("null_mean", "null mean"),
                           ("p", "p (max)"), ("dims", "kept dims a/b"), ("capped", "capped")],
                   {"p": lambda p: _p_bound(p, perms)}), "",
          "Agreement: Spearman rho between two measures' matched-depth profiles over the first model's layers "
          "(distances negated, so rho > 0 means the measures rank the layers alike; CKA is the debiased diagonal), "
          "with a two-sided permutation p (one profile's layer order shuffled).", ""]
    if agree is not None and agree.num_rows:
        md.append(md_table(agree.to_pylist(), [
            ("model_a", "model a"), ("model_b", "model b"), ("measure_1", "measure"), ("measure_2", "vs"),
            ("n_layers", "layers"), ("spearman_rho", "Spearman rho"), ("p_value", "p")],
            {"p_value": lambda p: fmt_p(p, 999)}))
    return md + [""]


def write_report(out: Path, res: dict[str, pa.Table], ctx: dict) -> Path:
    """Write data/*.parquet, figures/*.png and report.md under `out`; returns report.md's path."""
    out = Path(out)
    write_tables(out / "data", {k: res.get(k) for k in DATA_TABLES})
    figures = {"heatmaps": heatmaps(out / "figures", res["cka_matrix"]),
               "sinks": sink_figure(out / "figures", res["sink_profile"]),
               "causal": causal_figure(out / "figures", res.get("causal_profile"), res.get("cka_depth"),
                                       *(ctx.get("causal") or {}).get("cka", (None, None)))}
    path = out / "report.md"
    atomic_write_bytes(path, render(res, ctx, figures).encode("utf-8"))
    return path


def convergence_section(res: dict, ctx: dict) -> list[str]:
    """"Where convergence breaks": at each pair's peak matched-depth layers, the prompts that pull CKA
    down most, their traits, and only the traits a test supports."""
    prompts, cats, traits = (res.get(k) for k in ("influence_prompts", "influence_categories", "influence_traits"))
    if prompts is None or prompts.num_rows == 0:
        return []
    first = prompts.slice(0, 1).to_pylist()[0]
    md = ["## Where convergence breaks", "",
          "Which prompts pull CKA down where the models agree most? At each pair's peak matched-depth layer pair "
          f"({first['pooling']} pooling, {first['estimator']} CKA), every prompt's leave-one-out influence "
          "(`cka_influence`: CKA minus CKA without the prompt, from the Grams in O(n^2); negative = the prompt "
          "pulls CKA down). A trait is called shared only where a test supports it: Fisher's exact test of each "
          "category, of naming a language and of non-ASCII text among the top prompts against the rest, and the "
          "Mann-Whitney U test of length, Bonferroni-adjusted over the traits tested (p adj <= 0.05).", ""]
    for (a, b) in dict.fromkeys((r["model_a"], r["model_b"]) for r in prompts.to_pylist()):
        rows = [r for r in _where(prompts, model_a=a, model_b=b) if r.get("top")]
        rows.sort(key=lambda r: r["rank"])
        if not rows:
            continue
        r0 = rows[0]
        md += [f"### {a} vs {b}: layer {r0['layer_a']} vs {r0['layer_b']} (depth {fmt(r0['depth_a'])} / "
               f"{fmt(r0['depth_b'])}), CKA {fmt(r0['cka'], 3)} (jackknife se {fmt(r0['jackknife_se'], 3)}), "
               f"n = {r0['n']}", "",
               md_table(rows, [("rank", "rank"), ("prompt_id", "prompt"), ("category", "category"),
                               ("influence", "influence"), ("length", "length"), ("languages", "languages named"),
                               ("text", "text")],
                        {"influence": lambda x: fmt(x, 4), "text": lambda t: (t or "")[:70].replace("|", "/")}), ""]
        tr = _where(traits, model_a=a, model_b=b)
        if tr:
            shared = [t["trait"] for t in tr if t["shared"]]
            md += [md_table(tr, [("trait", "trait"), ("test", "test"), ("top_share", "top (share / median)"),
                                 ("rest_share", "rest"), ("p_value", "p"), ("p_adjusted", "p adj"),
                                 ("shared", "shared")],
                            {"p_value": lambda p: fmt(p, 3), "p_adjusted": lambda p: fmt(p, 3),
                             "shared": lambda x: "**yes**" if x else "no"}), "",
                   (f"The top {tr[0]['top_k']} prompts share: {', '.join(shared)} (supported by the test above)."
                    if shared else f"No trait is shared by the top {tr[0]['top_k']} prompts beyond chance "
                                   "(no adjusted p <= 0.05)."), ""]
        cr = _where(cats, model_a=a, model_b=b)
        if cr:
            md += ["Mean influence per category, against random sets of as many prompts (categories shuffled):", "",
                   md_table(cr, [("category", "category"), ("n_prompts", "prompts"),
                                 ("mean_influence", "mean influence"), ("null_p05", "null p05"),
                                 ("null_p95", "null p95"), ("p_low", "p (pulls down)"), ("p_high", "p (holds up)")],
                            {"mean_influence": lambda x: fmt(x, 5), "null_p05": lambda x: fmt(x, 5),
                             "null_p95": lambda x: fmt(x, 5), "p_low": lambda p: fmt(p, 3),
                             "p_high": lambda p: fmt(p, 3)}), ""]
    return md


def stages_section(res: dict, ctx: dict) -> list[str]:
    """"Stages": each model's own layer-by-layer CKA cut into contiguous stages, beside the motivating
    study's four bands."""
    t = res.get("stages")
    if t is None or t.num_rows == 0:
        return []
    from .analyses import FOUR_BANDS
    bands = ", ".join(f"{name} ~{d:.0%}" for name, d in FOUR_BANDS)
    md = ["## Stages", "",
          "Is there a four-stage structure in each model's own layer-by-layer similarity? `stages` (docs/sql.md): "
          "the optimal contiguous partition of the self-CKA matrix's rows (dynamic programming), the count chosen "
          "where its R^2 most exceeds that of smooth-decay surrogates (the matrix's own lag profile plus its "
          "deviations scattered over the layers), and the count's support p against them. Four stages are also "
          f"fitted as given. The motivating study's bands: {bands}; a stage holds a band when the band's depth "
          "falls within its layers (half a layer either side). They match only when the chosen count is 4, "
          "supported (p <= 0.05), with one band in each stage in order.", ""]
    rows = t.to_pylist()
    for m in dict.fromkeys(r["model"] for r in rows):
        for fit in ("chosen", "four given"):
            rs = [r for r in rows if r["model"] == m and r["fit"] == fit]
            if not rs:
                continue
            if rs[0].get("status") != "ok":
                md += [f"### {m} ({fit})", "", f"_{rs[0].get('status')}_", ""]
                continue
            r0 = rs[0]
            verdict_text = ("matches the four bands" if r0["matches_four"] else
                            "does not match the four bands" if fit == "chosen" else
                            ("bands in order" if r0["bands_in_order"] else "bands not one per stage"))
            md += [f"### {m} ({fit}): {r0['n_stages']} stage(s), R^2 {fmt(r0['r2'])} (null p95 "
                   f"{fmt(r0['null_r2_p95'])}), p {fmt(r0['p_value'], 3)}: {verdict_text}", "",
                   md_table(rs, [("stage", "stage"), ("first_layer", "first layer"), ("last_layer", "last layer"),
                                 ("depth_start", "depth from"), ("depth_end", "depth to"), ("within", "within"),
                                 ("between", "between"), ("bands", "bands held")]), ""]
    return md


__all__ = ["write_report", "render", "summary_lines", "md_table", "DATA_TABLES", "DEPTH_BANDS", "band_name"]
