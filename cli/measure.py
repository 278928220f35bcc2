"""`vindex measure`: a thin shell over vindex.query.measure_depth (the measures beyond CKA at matched
depth, each with its permutation null; docs/sql.md "Measures beyond CKA")."""
from __future__ import annotations

import click

from vindex.defaults import DEFAULT_PERMUTATIONS, DEFAULT_POOLING

from .query import fail, lake_option, note, open_lake, print_rows, user_errors

# vindex.query.measures.MEASURES, spelled here so that `vindex --help` imports no numpy
# (tests/test_measure_cli.py checks that the two lists agree)
MEASURES = ("procrustes", "shape_metric", "svcca", "pwcca", "rsa", "cknna")
PRINT_FORMATS = ["table", "csv", "json"]
COLUMNS = ["layer_a", "depth_a", "layer_b", "depth_b", "measure", "value", "null_p95", "p_value", "dims_a", "dims_b",
           "n", "note"]


@click.command()
@click.argument("model_a")
@click.argument("model_b")
@lake_option
@click.option("--measure", default="pwcca", show_default=True, type=click.Choice(MEASURES),
              help="procrustes and shape_metric are distances (smaller: more alike); the others similarities.")
@click.option("--pooling", default=DEFAULT_POOLING, show_default=True, help="Which pooled rows (pooled.pooling).")
@click.option("--prompt-set", default=None, help="Only this prompt set (default: all the models share).")
@click.option("--permutations", default=DEFAULT_PERMUTATIONS, show_default=True, type=click.IntRange(min=0),
              help="Shuffles of one side's rows in the null (0: no null).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-k", "--k", "k", default=10, show_default=True, type=click.IntRange(min=1),
              help="cknna: neighbours per row.")
@click.option("--dims", default=None, type=click.IntRange(min=1),
              help="svcca, pwcca: directions kept per side (default: by --variance).")
@click.option("--variance", default=0.99, show_default=True, type=float,
              help="svcca, pwcca: fraction of each side's variance the kept directions explain.")
@click.option("-f", "--format", "fmt", type=click.Choice(PRINT_FORMATS), default="table", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar (none either when stderr is not a terminal).")
@click.option("--allow-partial", is_flag=True,
              help="Compare a prompt set whose build was cut off, over the prompts both models hold (else an error).")
def measure(model_a, model_b, lakes, measure, pooling, prompt_set, permutations, seed, k, dims, variance, fmt, quiet,
            allow_partial):
    """A measure beyond CKA between each layer of MODEL_A and MODEL_B's layer at the nearest normalized
    depth, with its permutation null (one side's prompt rows shuffled).

    \b
    vindex measure -l lake gemma3-270m qwen2.5-0.5b --measure pwcca
    vindex measure -l lake gemma3-270m qwen2.5-0.5b --measure cknna -k 10 -f csv
    """
    from vindex.query import measure_depth
    try:
        con = open_lake(lakes, quiet)
        table = measure_depth(con, model_a, model_b, measure=measure, pooling=pooling, prompt_set=prompt_set,
                              permutations=permutations, seed=seed, k=k, dims=dims, variance=variance,
                              allow_partial=allow_partial)
        print_rows(con, table, COLUMNS, fmt)
        if fmt == "table":
            if not permutations:
                note("no permutation null (--permutations 0): these values carry no p-value")
            if measure in ("procrustes", "shape_metric"):
                note(f"{measure} is a distance: smaller is more alike, and p_value counts null values at or below it")
    except user_errors() as e:
        fail(e)


COMMANDS = [measure]
