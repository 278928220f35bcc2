"""`vindex influence` and `vindex stages`: thin shells over vindex.query.cka_influence (and its
category summary) and vindex.query.stages. Heavy imports happen inside the commands."""
from __future__ import annotations

import click

from vindex.defaults import DEFAULT_ESTIMATOR, DEFAULT_POOLING

from .query import FORMATS, fail, lake_option, open_lake, print_rows, user_errors

PRINT_FORMATS = [f for f in FORMATS if f != "parquet"]


@click.command()
@click.argument("model_a")
@click.argument("model_b")
@click.argument("layer_a", type=int)
@click.argument("layer_b", type=int)
@lake_option
@click.option("--pooling", default=DEFAULT_POOLING, show_default=True, help="Which pooled rows (pooled.pooling).")
@click.option("--estimator", default=DEFAULT_ESTIMATOR, show_default=True, type=click.Choice(["biased", "debiased"]))
@click.option("--prompt-set", default=None, help="Only this prompt set (default: all the models share).")
@click.option("--by-category", is_flag=True,
              help="Print the summary per prompt category, with its label-permutation null, instead.")
@click.option("--permutations", default=999, show_default=True, type=click.IntRange(min=0),
              help="With --by-category: category shuffles for the null of each category's mean influence.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=1),
              help="Prompts printed, most negative influence (pulls CKA down most) first.")
@click.option("-f", "--format", "fmt", type=click.Choice(PRINT_FORMATS), default="table", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar (none either when stderr is not a terminal).")
@click.option("--allow-partial", is_flag=True,
              help="Compare a prompt set whose build was cut off, over the prompts both models hold (else an error).")
def influence(model_a, model_b, layer_a, layer_b, lakes, pooling, estimator, prompt_set, by_category, permutations,
              seed, top, fmt, quiet, allow_partial):
    """Which prompts pull CKA down: the leave-one-out change of CKA between LAYER_A of MODEL_A and
    LAYER_B of MODEL_B, per prompt (influence = CKA - CKA without the prompt; < 0 pulls it down).

    \b
    vindex influence -l lake gemma3-270m qwen2.5-0.5b 9 12 --top 10
    vindex influence -l lake gemma3-270m qwen2.5-0.5b 9 12 --by-category
    """
    from vindex.query import cka_influence, cka_influence_summary
    try:
        con = open_lake(lakes, quiet)
        options = dict(pooling=pooling, estimator=estimator, prompt_set=prompt_set, allow_partial=allow_partial)
        if by_category:
            table = cka_influence_summary(con, model_a, model_b, layer_a, layer_b, permutations=permutations,
                                          seed=seed, **options)
            columns = ["category", "n_prompts", "mean_influence", "null_p05", "null_p95", "p_low", "p_high", "cka"]
        else:
            table = cka_influence(con, model_a, model_b, layer_a, layer_b, **options).slice(0, top)
            columns = ["rank", "prompt_id", "category", "influence", "cka_without", "cka", "jackknife_se"]
        print_rows(con, table, columns, fmt)
    except user_errors() as e:
        fail(e)


@click.command()
@click.argument("model")
@lake_option
@click.option("--pooling", default=DEFAULT_POOLING, show_default=True, help="Which pooled rows (pooled.pooling).")
@click.option("--estimator", default=DEFAULT_ESTIMATOR, show_default=True, type=click.Choice(["biased", "debiased"]))
@click.option("--prompt-set", default=None, help="Only this prompt set (default: all the model holds).")
@click.option("--max-stages", default=8, show_default=True, type=click.IntRange(min=1), help="Most stages tried.")
@click.option("--n-stages", default=None, type=click.IntRange(min=1),
              help="Fit this many stages instead of choosing the count (its p-value is still given).")
@click.option("--permutations", default=99, show_default=True, type=click.IntRange(min=0),
              help="Smooth-decay surrogates for the null and the gap statistic.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-f", "--format", "fmt", type=click.Choice(PRINT_FORMATS), default="table", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar (none either when stderr is not a terminal).")
def stages(model, lakes, pooling, estimator, prompt_set, max_stages, n_stages, permutations, seed, fmt, quiet):
    """Cut MODEL's layers into contiguous stages from its own layer-by-layer CKA: the optimal partition
    (dynamic programming), the count by the gap statistic, and its p-value against a smooth decay.

    \b
    vindex stages -l lake gemma3-270m
    vindex stages -l lake gemma3-270m --n-stages 4
    """
    from vindex.query import stages as stages_fn
    try:
        con = open_lake(lakes, quiet)
        table = stages_fn(con, model, pooling=pooling, estimator=estimator, prompt_set=prompt_set,
                          max_stages=max_stages, n_stages=n_stages, permutations=permutations, seed=seed)
        print_rows(con, table, ["stage", "first_layer", "last_layer", "depth_start", "depth_end", "within", "between",
                                "n_stages", "criterion", "r2", "null_r2_p95", "p_value"], fmt)
    except user_errors() as e:
        fail(e)


COMMANDS = [influence, stages]
