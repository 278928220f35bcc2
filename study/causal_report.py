"""The causal section of the study's report: restoration by normalized depth per model (figure and
table), the depth of peak restoration with its bootstrap interval, and the verdicts on the
motivating claim (study/causal.py computes them)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from .causal import ENTITY_BAND, POSITIONS, SITE, TOLERANCE
from .markdown import md_table


def _fmt(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def causal_figure(fig_dir: Path, profile: pa.Table | None, diag: pa.Table | None, pooling: str,
                  estimator: str) -> Path | None:
    """Per model: mean restoration (subject and last position) against normalized depth with its 95%
    bootstrap band, the entity band shaded, and each pair's matched-depth CKA diagonal (dashed)."""
    if profile is None or profile.num_rows == 0:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = profile.to_pylist()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.4 * len(models), 3.3), dpi=110, squeeze=False)
    cka = [r for r in (diag.to_pylist() if diag is not None and diag.num_rows else [])
           if r["pooling"] == pooling and r["estimator"] == estimator and r["diagonal"] is not None]
    for ax, m in zip(axes[0], models):
        ax.axvspan(*ENTITY_BAND, color="0.9", label="claimed entity band")
        for colour, pos in (("tab:blue", "subject"), ("tab:red", "last")):
            pts = sorted((r["depth"], r["restoration"], r["ci_low"], r["ci_high"]) for r in rows
                         if r["model"] == m and r["position"] == pos)
            x = [p[0] for p in pts]
            ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], color=colour, alpha=0.2, lw=0)
            ax.plot(x, [p[1] for p in pts], marker=".", lw=1, color=colour, label=f"{pos} position")
        for other in dict.fromkeys((r["model_a"], r["model_b"]) for r in cka if m in (r["model_a"], r["model_b"])):
            side = "a" if other[0] == m else "b"
            by_depth: dict = {}   # model_b's layers can match several of model_a's: their mean
            for r in cka:
                if (r["model_a"], r["model_b"]) == other:
                    by_depth.setdefault(r[f"depth_{side}"], []).append(r["diagonal"])
            pts = sorted((d, sum(v) / len(v)) for d, v in by_depth.items())
            if other[0] != other[1]:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", lw=1, color="0.3",
                        label=f"CKA vs {other[1] if side == 'a' else other[0]}")
        ax.axhline(0, color="0.6", lw=0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("normalized depth (layer / blocks)")
        ax.set_ylabel("restoration (mean over pairs)")
        ax.set_title(m, fontsize=9)
        ax.legend(fontsize=6, frameon=False)
    fig.suptitle(f"patching clean into corrupt ({SITE}); CKA: {pooling}, {estimator}", fontsize=9)
    fig.tight_layout()
    fig_dir.mkdir(parents=True, exist_ok=True)
    path = fig_dir / "causal_restoration.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def causal_summary_lines(res: dict) -> list[str]:
    """The causal lines of the printed summary: each model's peak with its interval, and the claim."""
    peaks, tests = res.get("causal_peaks"), res.get("causal_tests")
    if peaks is None or peaks.num_rows == 0:
        return []
    lines = []
    for p in peaks.to_pylist():
        if p.get("status") != "ok":
            lines.append(f"causal {p['model']}: {p.get('status')}")
            continue
        lines.append(f"causal {p['model']}: peak restoration at depth {_fmt(p['peak_depth'])} (layer {p['peak_layer']}; "
                     f"95% CI {_fmt(p['peak_ci_low'])}-{_fmt(p['peak_ci_high'])}, {p['n_known']}/{p['n_pairs']} pairs "
                     f"known, {p['resamples']} resamples); restoration over {ENTITY_BAND[0]:.0%}-{ENTITY_BAND[1]:.0%}: "
                     f"last {_fmt(p.get('band_last'))} [{_fmt(p.get('band_last_ci_low'))}, "
                     f"{_fmt(p.get('band_last_ci_high'))}], subject {_fmt(p.get('band_subject'))}")
    claim = [t for t in tests.to_pylist() if t["test"] == "the motivating claim"] if tests is not None else []
    if claim:
        lines.append(f"causal claim (entity layer ~50-60% restores, and CKA peaks there): {claim[0]['verdict']}")
    return lines


def causal_section(res: dict, ctx: dict, figure: Path | None) -> list[str]:
    """"## Causal: where patching restores the answer"."""
    peaks, tests, profile = (res.get(k) for k in ("causal_peaks", "causal_tests", "causal_profile"))
    if peaks is None:
        return []
    c = ctx.get("causal") or {}
    md = ["## Causal: where patching restores the answer", "",
          "The motivating claim: patching the clean run into the corrupted one at the entity layer (~50-60% depth) "
          "restores the answer, and that is where cross-model similarity peaks. Here: "
          f"{c.get('n_pairs', '?')} pairs of `{c.get('pairs', '?')}` (stratified by category, drawn with seed "
          f"{c.get('seed', '?')}; run `{c.get('run_id', '?')}` of each vindex's `patching` table), site `{SITE}` "
          f"at every layer, positions `{POSITIONS}`: the last subject token (the last position where the prompts "
          "differ) and the last position. Restoration = (LD(patched) - LD(corrupt)) / (LD(clean) - LD(corrupt)), "
          "LD = logit(answer) - logit(wrong) (Meng et al. 2022), averaged over the pairs the model knows "
          "(LD(clean) > 0 > LD(corrupt)). The depth of peak restoration is the layer whose block adds the most "
          "restoration at the last position (where the answer arrives there). Intervals: 95% percentile "
          f"bootstrap over pairs, {c.get('resamples', '?')} resamples, numpy default_rng([seed, crc32(model)]). "
          f"A depth matches a target only when its whole interval lies within it (entity band {ENTITY_BAND[0]}-"
          f"{ENTITY_BAND[1]} widened by half a layer; two depths within +-{TOLERANCE}), differs when the whole "
          "interval lies outside, and is undecided otherwise. The CKA peak is the layer pair of highest "
          f"matched-depth CKA ({c.get('pooling', '?')} pooling, {c.get('estimator', '?')}) above layer 0 (the "
          "embedding output, where CKA says how alike the tokenizers split the prompts), a point without an "
          "interval: its null says the CKA is above chance, not how sharp its peak is.", ""]
    if figure is not None:
        md += [f"![restoration by depth](figures/{figure.name})", ""]
    rows = peaks.to_pylist()
    ok = [p for p in rows if p.get("status") == "ok"]
    md += _table(ok, [("model", "model"), ("n_known", "pairs known"), ("n_pairs", "pairs run"),
                      ("peak_layer", "peak layer"), ("peak_depth", "peak depth"), ("ci", "95% CI"),
                      ("peak_share", "resamples at the peak"), ("peak_gain", "gain there"),
                      ("band_last", "last, 50-60%"), ("band_last_ci", "CI"),
                      ("band_subject", "subject, 50-60%"), ("band_subject_ci", "CI")],
                 lambda p: {**p, "ci": f"{_fmt(p['peak_ci_low'])}-{_fmt(p['peak_ci_high'])}",
                            "band_last_ci": f"{_fmt(p.get('band_last_ci_low'))}-{_fmt(p.get('band_last_ci_high'))}",
                            "band_subject_ci": f"{_fmt(p.get('band_subject_ci_low'))}-"
                                               f"{_fmt(p.get('band_subject_ci_high'))}"})
    for p in rows:
        if p.get("status") != "ok":
            md += [f"- {p['model']}: {p.get('status')}"]
    md += [""]
    if profile is not None and profile.num_rows:
        md += ["Restoration by layer (mean over the known pairs, 95% interval):", ""]
        by: dict = {}
        for r in profile.to_pylist():
            by.setdefault((r["model"], r["layer"]), {"model": r["model"], "layer": r["layer"], "depth": r["depth"]})[
                r["position"]] = f"{r['restoration']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        md += _table(list(by.values()), [("model", "model"), ("layer", "layer"), ("depth", "depth"),
                                         ("subject", "subject position"), ("last", "last position")]) + [""]
    if tests is not None and tests.num_rows:
        t = tests.to_pylist()
        claim = [r for r in t if r["test"] == "the motivating claim"]
        md += _table([r for r in t if r["test"] != "the motivating claim"],
                     [("test", "test"), ("model", "model"), ("other", "vs"), ("estimate", "estimate"),
                      ("ci", "95% CI"), ("target", "target"), ("verdict", "verdict")],
                     lambda r: {**r, "ci": f"{_fmt(r['ci_low'])}-{_fmt(r['ci_high'])}"}) + [""]
        if claim:
            md += [f"**The motivating claim {claim[0]['verdict']}.**", ""]
    return md


def _table(rows: list[dict], columns, prep=None) -> list[str]:
    rows = [prep(r) if prep else r for r in rows]
    fmt = {k: (lambda x: _fmt(x) if isinstance(x, float) else ("-" if x is None else str(x))) for k, _ in columns}
    return [md_table(rows, list(columns), fmt)] if rows else []
