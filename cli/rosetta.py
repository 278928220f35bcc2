"""`vindex rosetta`: a thin shell over vindex.query.rosetta (docs/rosetta.md)."""
from __future__ import annotations

import click

from vindex.defaults import DEFAULT_POOLING

from .query import fail, lake_option, note, open_lake, print_rows, user_errors

COLUMNS = ["model_a", "layer_a", "model_b", "layer_b", "r2", "r2_null_p95", "r2_p_value", "cka", "cka_null_p95",
           "ridge_lambda", "rank", "scale", "dual"]


@click.command()
@click.argument("model_a")
@click.argument("model_b")
@lake_option
@click.option("--pooling", default=DEFAULT_POOLING, show_default=True, help="Pooled rows to fit on.")
@click.option("--method", default="ridge", show_default=True, type=click.Choice(["ridge", "procrustes", "cca"]))
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=2), help="k of the held-out k-fold scores.")
@click.option("--pairs", default="matched", show_default=True, type=click.Choice(["matched", "all"]),
              help="Layer pairs at the nearest normalized depth, or every pair.")
@click.option("--permutations", default=0, show_default=True, type=click.IntRange(min=0),
              help="Shuffled-rows refits in the null (each one repeats the k-fold fit).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the folds and the permutations.")
@click.option("--prompt-set", default=None, help="Only this prompt set (default: all the models share).")
@click.option("--allow-partial", is_flag=True,
              help="Fit on the prompts both models hold when a build was interrupted.")
@click.option("--store", is_flag=True, help="Write the fitted maps into each target model's vindex (the maps table).")
def rosetta(model_a, model_b, lakes, pooling, method, folds, pairs, permutations, seed, prompt_set, allow_partial,
            store):
    """Linear maps between MODEL_A's and MODEL_B's layers at matched depth, fitted both ways: held-out
    R^2 and CKA of the mapped rows, with a shuffled-rows null (--permutations).

    \b
    vindex rosetta -l lake gemma3-270m qwen2.5-0.5b --permutations 19
    vindex rosetta -l lake gemma3-270m qwen2.5-0.5b --method procrustes --store
    """
    from vindex.query import rosetta as fit_maps
    try:
        con = open_lake(lakes)
        table = fit_maps(con, model_a, model_b, pooling=pooling, method=method, folds=folds,
                         pairs=pairs, permutations=permutations, seed=seed, prompt_set=prompt_set,
                         allow_partial=allow_partial, store=store)
        print_rows(con, table, COLUMNS, "table")
        if not permutations:
            note("no permutation null (--permutations 0): these scores carry no p-value")
        if store:
            note(f"{table.num_rows} maps written to the maps table of {model_a!r} and {model_b!r}")
    except user_errors() as e:
        fail(e)


COMMANDS = [rosetta]
