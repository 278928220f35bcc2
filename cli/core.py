"""`vindex info` and `vindex verify`."""
from __future__ import annotations

import json
import sys

import click

from vindex import info as info_fn
from vindex import verify as verify_fn
from vindex.errors import VindexError
from vindex.summary import human_bytes


def fail(e: Exception) -> None:
    """Print a VindexError as one clear line and exit 1 (no traceback for user errors)."""
    click.echo(f"error: {e}", err=True)
    sys.exit(1)


@click.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(path, as_json):
    """Show a vindex's model, layers, tables, sizes and prompt sets."""
    try:
        d = info_fn(path)
    except VindexError as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    m = d["model"]
    click.echo(f"vindex  {d['name']}  ({d['path']})")
    click.echo(f"model   {m.get('id')}  family={m.get('family')}  layers={m.get('n_layers')}  "
               f"d_model={m.get('d_model')}  d_ffn={m.get('d_ffn')}  vocab={m.get('vocab_size')}")
    for name, ps in d["prompt_sets"].items():
        click.echo(f"prompts {name}: {ps['n_prompts']} prompts, sha256 {ps['sha256'][:12]}")
    click.echo(f"{'table':<12} {'files':>6} {'rows':>10} {'size':>10}  layers  vector")
    for name, t in sorted(d["tables"].items()):
        layers = f"{t['layers'][0]}-{t['layers'][-1]}" if t["layers"] else "-"
        vec = f"{t['vector_dtype']}[{t['vector_width']}]" if t["vector_width"] else "-"
        click.echo(f"{name:<12} {t['files']:>6} {t['rows']:>10} {human_bytes(t['bytes']):>10}  {layers:<7} {vec}")


@click.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--checksums/--no-checksums", default=True, show_default=True,
              help="Check every file's sha256; --no-checksums still checks sizes, schemas and rows.")
def verify(path, checksums):
    """Check every file of a vindex against its manifest; exit 1 on any problem."""
    problems = verify_fn(path, checksums=checksums)
    for p in problems:
        click.echo(str(p), err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) in {path}", err=True)
        sys.exit(1)
    click.echo(f"ok: {path}")


COMMANDS = [info, verify]
