"""`vindex study`: a thin shell over vindex.study.study (same names, same defaults)."""
from __future__ import annotations

import click


@click.command()
@click.argument("models", nargs=-1, default=("smollm2-135m", "gemma3-270m"))
@click.option("-o", "--out", default="study-report", show_default=True, type=click.Path(file_okay=False),
              help="report folder: report.md, figures/*.png, data/*.parquet.")
@click.option("--lake", default="lake", show_default=True, type=click.Path(file_okay=False),
              help="where vindexes are built (lake/<name>) and found again on a rerun.")
@click.option("--prompts", default="default", show_default=True,
              help="'default', 'heldout', or a JSONL / CSV / Parquet / .txt file of prompts.")
@click.option("--pooling", "poolings", multiple=True, type=click.Choice(["last", "mean_nosink", "mean"]),
              default=("last", "mean_nosink"), show_default=True,
              help="pooling for the matched-depth tables (repeat; first = primary); mean is always added "
                   "for the sink confound.")
@click.option("--estimator", "estimators", multiple=True, type=click.Choice(["biased", "debiased"]),
              default=("biased", "debiased"), show_default=True,
              help="CKA estimators for the matched-depth tables (repeat).")
@click.option("--permutations", type=int, default=99, show_default=True,
              help="shuffles for every permutation null (99 resolves p down to 0.01; 0 disables).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--band", type=float, default=0.15, show_default=True,
              help="|depth_a - depth_b| from which a layer pair counts as off-diagonal.")
@click.option("--knn-k", type=int, default=10, show_default=True, help="neighbours for mutual k-NN alignment.")
@click.option("--lexicon", type=click.Path(exists=True),
              help="category lexicon: a folder of <category>.txt files or a JSON file (default: the shipped one).")
@click.option("--weights/--no-weights", default=True, show_default=True,
              help="build the features table (down_meta) where a vindex lacks it.")
@click.option("--feature-vectors", type=click.Choice(["down", "gate"]), default="down", show_default=True,
              help="feature vector stored for clustering when features are built: W_down column or W_gate row.")
@click.option("--dtype", type=click.Choice(["auto", "float16", "float32"]), default="auto", show_default=True,
              help="activation storage for new builds (auto: float16 unless states overflow it).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="prompts per forward pass.")
@click.option("--layers", help="layers to build for new vindexes, e.g. '0-8,12' (default: all).")
@click.option("--allow-partial", is_flag=True,
              help="study an existing vindex whose build was cut off, over the prompts there are (else an error).")
@click.option("--causal/--no-causal", default=True, show_default=True,
              help="the causal section: patch each decoder (resid_post, every layer, subject and last positions) "
                   "over --causal-pairs pairs and compare the depth of peak restoration across models and with "
                   "the CKA peak (CPU: a few minutes per model).")
@click.option("--pairs", default="factual", show_default=True,
              help="clean/corrupt pairs for the causal section: 'factual' (shipped, 78) or a JSONL/CSV file.")
@click.option("--causal-pairs", type=int, default=24, show_default=True,
              help="pairs patched per model, stratified by category and drawn with --seed.")
@click.option("--resamples", type=int, default=1000, show_default=True,
              help="bootstrap resamples of the pairs for every causal interval.")
@click.option("--quiet", is_flag=True, help="no progress, no summary (the report path is still printed).")
def study(models, out, lake, prompts, poolings, estimators, permutations, seed, band, knn_k, lexicon, weights,
          feature_vectors, dtype, batch_size, layers, allow_partial, causal, pairs, causal_pairs, resamples, quiet):
    """Reproduce the cross-model study: do models converge at matched depth, above chance?

    MODELS are offline names (smollm2-135m, gemma3-270m, qwen2.5-0.5b, minilm-l6), model folders,
    .gguf files, Hub ids, or existing vindex folders; default: smollm2-135m gemma3-270m. Builds
    what the lake lacks, then writes OUT/report.md with CKA heatmaps, the matched-depth table with
    permutation nulls (biased and debiased), mutual k-NN, per-category CKA, concept clustering
    and the confounds (attention sinks, last-token identity, estimator gap), and the causal section
    (where patching the clean run into the corrupted one restores the answer). A rerun reuses
    everything already computed and takes seconds.
    """
    from vindex.study import study as study_fn
    report = study_fn(list(models), out, lake=lake, prompts=prompts, poolings=poolings,
                      estimators=estimators, permutations=permutations, seed=seed, band=band,
                      knn_k=knn_k, lexicon=lexicon, weights=weights, feature_vectors=feature_vectors,
                      dtype=dtype, batch_size=batch_size, layers=layers, allow_partial=allow_partial,
                      causal=causal, pairs=pairs, causal_pairs=causal_pairs, resamples=resamples,
                      progress=not quiet)
    if quiet:
        click.echo(str(report))


COMMANDS = [study]
