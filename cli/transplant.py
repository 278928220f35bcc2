"""`vindex transplant`: a thin shell over vindex.ingest.transplant.transplant (same options and defaults)."""
from __future__ import annotations

import click

from .query import lake_option, note

COLUMNS = ["arm", "alpha", "target_change", "control_change", "effect", "null_mean", "null_p95", "p_value",
           "cos_native", "raw_norm"]


@click.command()
@click.argument("model_a")
@click.argument("model_b")
@click.argument("layer_a", type=int)
@click.option("--positive", required=True, help="prompt category whose pooled mean the direction points to.")
@click.option("--negative", required=True, help="prompt category whose pooled mean the direction points from.")
@lake_option
@click.option("--source", help="MODEL_B's weights: a folder, .gguf, Hub id or offline name (default: MODEL_B).")
@click.option("--method", default="ridge", show_default=True, type=click.Choice(["ridge", "procrustes", "cca"]),
              help="which stored map (vindex rosetta A B --method M --store).")
@click.option("--alphas", default="0,1,2,4,8", show_default=True,
              help="multiples of the direction added (each arm has the norm of MODEL_B's own direction).")
@click.option("--prompts", default="factual", show_default=True,
              help="prompts MODEL_B is steered on: 'factual', a shipped prompt set or a file.")
@click.option("--targets", default=" Paris", show_default=True, help="target tokens scored, comma-separated.")
@click.option("--controls", help="control tokens scored, comma-separated (effect = target - control change).")
@click.option("--null", type=int, default=8, show_default=True, help="random directions of equal norm (the null).")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the null's directions.")
@click.option("--run-id", help="prefix of the three steering runs (default: transplant-L<layer>-<method>-<hash>).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="rows per forward pass.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="skip the parts a killed run committed.")
@click.option("--quiet", is_flag=True, help="no progress lines.")
@click.option("--device", help="torch device (default: cuda when available, else cpu).")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="also save the table here (.parquet or .csv).")
def transplant(model_a, model_b, layer_a, positive, negative, lakes, source, method, alphas, prompts, targets,
               controls, null, seed, run_id, batch_size, resume, quiet, device, fmt, output):
    """Carry the POSITIVE - NEGATIVE direction of MODEL_A's LAYER_A into MODEL_B through a stored Rosetta
    map and steer MODEL_B with it, beside MODEL_B's own direction for the same categories, the unmapped
    (zero-padded or truncated) vector and random directions of equal norm.

    \b
    vindex rosetta -l lake smollm2-135m gemma3-270m --store
    vindex transplant -l lake smollm2-135m gemma3-270m 15 --positive french --negative german \\
        --prompts neutral.jsonl --targets " le, la" --controls " der, die"
    """
    import duckdb

    from vindex.ingest.transplant import transplant as transplant_fn
    from .query import print_rows
    table = transplant_fn(model_a, model_b, layer_a, positive, negative, lakes or ".", source=source, method=method,
                          alphas=alphas, prompts=prompts, targets=targets, controls=controls, null=null, seed=seed,
                          run_id=run_id, batch_size=batch_size, resume=resume, progress=not quiet, device=device)
    print_rows(duckdb.connect(), table, COLUMNS if fmt == "table" else None, fmt)
    if output:
        if str(output).endswith(".csv"):
            import pyarrow.csv as pcsv
            pcsv.write_csv(table, output)
        else:
            import pyarrow.parquet as pq
            pq.write_table(table, output)
    if fmt == "table":
        r = table.slice(0, 1).to_pylist()[0]
        note(f"{model_a} layer {r['layer_a']} -> {model_b} layer {r['layer_b']} ({r['method']} map, held-out R^2 "
             f"{r['map_r2']:.3g}); every arm rescaled to ||native|| = {r['norm']:.4g}; p_value against "
             f"{r['n_null']} random directions of that norm")


COMMANDS = [transplant]
