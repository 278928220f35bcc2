"""`vindex patch`, `vindex ablate`, `vindex steer`: thin shells over vindex.ingest.patching.patch,
vindex.ingest.ablation.ablate and vindex.ingest.steering.steer (same names, same defaults).

Data flows through the lake, not imports: where --features or --direction is SQL, this command runs it
on the lake (-l/--lake, vindex.query.connect) and hands the ingest function plain numbers.
"""
from __future__ import annotations

import re

import click

from vindex.errors import InvalidValue

from .query import lake_option

_SQL = re.compile(r"^\s*(select|with|from|\()", re.I)


def _common(f):
    for opt in reversed([
        click.option("--out", type=click.Path(file_okay=False),
                     help="the model's vindex folder the table is written into (default: lake/<name>)."),
        click.option("--name", help="vindex name (the `model` column); default: the model's short name."),
        click.option("--run-id", help="the run's name in the table (run_id column and partition)."),
        click.option("--batch-size", type=int, default=64, show_default=True, help="rows per forward pass."),
        click.option("--resume/--no-resume", default=True, show_default=True,
                     help="skip the parts a killed run committed; --no-resume redoes the run."),
        click.option("--quiet", is_flag=True, help="no progress lines."),
        click.option("--device", help="torch device (default: cuda when available, else cpu)."),
    ]):
        f = opt(f)
    return f


@click.command()
@click.argument("source")
@click.option("--pairs", default="factual", show_default=True,
              help="'factual' (the shipped 78 pairs) or a JSONL/CSV file of clean, corrupt, answer, wrong.")
@click.option("--sites", default="resid_post,attn_out,mlp_out", show_default=True,
              help="sites to patch (TransformerLens names: resid_post, attn_out, mlp_out, mlp_post, ...).")
@click.option("--layers", help="vindex layers, e.g. '0-8,12' (default: all; attn_out/mlp_out start at 1).")
@click.option("--positions", default="all", show_default=True,
              help="all (every position; pairs must tokenize to equal lengths), last, or indices and names "
                   "like 0,3,-1 or subject,last (subject: the last position where the prompts differ).")
@click.option("--pairs-per-part", type=int, default=16, show_default=True, help="pairs per shard (the unit of resume).")
@_common
def patch(source, pairs, sites, layers, positions, pairs_per_part, out, name, run_id, batch_size, resume, quiet,
          device):
    """Activation patching: write each clean value at (site, layer, position) into the corrupted run and
    store the logit difference it restores (table `patching`).

    SOURCE is a decoder: a model folder, a .gguf file, a Hub id or an offline name (smollm2-135m, ...).

    \b
    vindex patch smollm2-135m                          # factual pairs, 3 sites, every layer and position
    vindex patch smollm2-135m --pairs my.jsonl --sites resid_post --positions last
    vindex sql -l lake "SELECT layer, avg(restoration) FROM patching WHERE site = 'resid_post' GROUP BY 1 ORDER BY 1"
    """
    from vindex.ingest.patching import patch as patch_fn
    root = patch_fn(source, pairs, out, name=name, sites=sites, layers=layers, positions=positions, run_id=run_id,
                    batch_size=batch_size, pairs_per_part=pairs_per_part, resume=resume, progress=not quiet,
                    device=device)
    click.echo(str(root))


def features_from(features: str, lakes) -> list[tuple[int, int]] | str:
    """A '20:1337,21:42' list as given, or the (layer, feature) rows of a SQL query over the lake."""
    if not _SQL.match(features):
        return features
    from vindex.query import connect
    rows = connect(*(lakes or (".",))).sql(features).fetchall()
    if not rows:
        raise InvalidValue(f"--features: the query selects nothing (no feature to ablate): {features}")
    if any(len(r) < 2 for r in rows):
        raise InvalidValue("--features: the query must return (layer, feature) columns")
    return [(int(r[0]), int(r[1])) for r in rows]


@click.command()
@click.argument("source")
@click.option("--features", required=True,
              help="layer:feature pairs ('20:1337,21:42') or a SQL query over the lake returning (layer, feature), "
                   "e.g. \"SELECT layer, feature FROM features WHERE model = 'smollm2-135m' AND top_token = ' Paris'\".")
@lake_option
@click.option("--prompts", default="factual", show_default=True,
              help="'factual' (the shipped pairs' clean prompts and answers) or a JSONL/CSV of text, answer.")
@click.option("--targets", help="answer token(s) whose prompts are the targets (' Paris'); the rest are controls.")
@click.option("--mode", type=click.Choice(["zero", "mean"]), default="zero", show_default=True,
              help="set the features to zero, or to their mean over every token of the prompts.")
@_common
def ablate(source, features, lakes, prompts, targets, mode, out, name, run_id, batch_size, resume, quiet, device):
    """Feature ablation: zero (or mean) FFN features and store each prompt's answer logit, probability and
    rank before and after, targets and controls (table `ablations`).

    \b
    vindex ablate smollm2-135m --features "SELECT layer, feature FROM features
        WHERE model = 'smollm2-135m' AND top_token = ' Paris'" -l lake --targets " Paris"
    """
    from vindex.ingest.ablation import ablate as ablate_fn
    root = ablate_fn(source, features_from(features, lakes), out, name=name, prompts=prompts, targets=targets,
                     mode=mode, run_id=run_id, batch_size=batch_size, resume=resume, progress=not quiet,
                     device=device)
    click.echo(str(root))


def direction_from(direction: str, lakes):
    """A .npy/.txt file name as given, or the vector a SQL query over the lake returns (one row, one list)."""
    if not _SQL.match(direction):
        return direction
    import numpy as np
    from vindex.query import connect
    rows = connect(*(lakes or (".",))).sql(direction).fetchall()
    if len(rows) != 1 or len(rows[0]) != 1 or not isinstance(rows[0][0], (list, tuple, np.ndarray)):
        raise InvalidValue(f"--direction: the query must return one row with one vector column; it returned "
                           f"{len(rows)} row(s)")
    return np.asarray(rows[0][0], dtype=np.float64)


@click.command()
@click.argument("source")
@click.option("--direction", required=True,
              help="a .npy/.txt file of d_model numbers, or a SQL query over the lake returning one vector.")
@click.option("--layer", type=int, required=True, help="vindex layer whose resid_post is steered (0 = embeddings).")
@lake_option
@click.option("--alphas", default="0,1,2,4,8", show_default=True, help="multiples of the direction added.")
@click.option("--prompts", default="factual", show_default=True,
              help="'factual' (the shipped pairs' clean prompts), a shipped prompt set or a file.")
@click.option("--targets", default=" Paris", show_default=True, help="target tokens scored, comma-separated.")
@click.option("--controls", help="control tokens scored, comma-separated.")
@click.option("--null", type=int, default=8, show_default=True,
              help="random directions of equal norm at the same layer (the null; rows with is_null).")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the null's directions.")
@_common
def steer(source, direction, layer, lakes, alphas, prompts, targets, controls, null, seed, out, name, run_id,
          batch_size, resume, quiet, device):
    """Steering: add alpha * direction to resid_post at --layer and store target and control token logits
    per alpha, with random directions of equal norm as the null (table `steering`).

    \b
    vindex steer smollm2-135m -l lake --layer 15 --targets " Paris" --controls " Rome" --direction "
        SELECT list_transform(range(576), i -> a.act[i + 1] - b.act[i + 1]) FROM ..."
    """
    from vindex.ingest.steering import steer as steer_fn
    root = steer_fn(source, direction_from(direction, lakes), layer, out, name=name, alphas=alphas, prompts=prompts,
                    targets=targets, controls=controls, null=null, seed=seed, run_id=run_id, batch_size=batch_size,
                    resume=resume, progress=not quiet, device=device)
    click.echo(str(root))


COMMANDS = [patch, ablate, steer]
