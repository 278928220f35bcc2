"""`vindex import-larql`: bring a LarQL vindex (folder or hf:// repo) into the lake."""
from __future__ import annotations

import click

from vindex import info


@click.command("import-larql")
@click.argument("src")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder of the new vindex (created; a re-import of the same SRC replaces its tables).")
@click.option("--name", default=None, help="Vindex name (the `model` column); default: the --out folder's name.")
@click.option("--gate-vectors", is_flag=True,
              help="Also import gate_vectors.bin as features.vector (large: downloads it from the Hub).")
@click.option("--embeddings", is_flag=True,
              help="Also import embeddings.bin as the `embeddings` table (token_id, token, W_E row); with "
                   "--gate-vectors, `describe` then ranks features by gate . embedding.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) for hf:// sources.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def import_larql(src, out, name, gate_vectors, embeddings, revision, quiet):
    """Import the LarQL vindex SRC (a folder or hf://[datasets/]org/name[@rev]) as a Parquet vindex.

    Reads index.json, down_meta, tokenizer.json, label files and ov-gate NDJSON (and, with
    --gate-vectors, gate_vectors.bin; with --embeddings, embeddings.bin); never the other inference
    weights.
    """
    from vindex.ingest.larql import import_larql as run
    root = run(src, out, name=name, gate_vectors=gate_vectors, embeddings=embeddings, revision=revision,
               progress=not quiet)
    d = info(root)
    click.echo(f"imported {src} -> {root} (vindex {d['name']!r}: "
               + ", ".join(f"{t} {d['tables'][t]['rows']} rows" for t in d["tables"]) + ")")


COMMANDS = [import_larql]
