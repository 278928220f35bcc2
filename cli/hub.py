"""`vindex publish`, `vindex pull`, `vindex ls`: thin shells over vindex.hub.publish, pull and ls.

The token comes from huggingface_hub's usual places (HF_TOKEN, `hf auth login`), never from a
command-line option (it would end up in the shell history).
"""
from __future__ import annotations

import json

import click

from vindex.layers import parse_layers


def split_list(values) -> list[str] | None:
    """Repeated and/or comma-separated option values -> one list (None when not given)."""
    out = [v.strip() for value in values or () for v in value.split(",") if v.strip()]
    return out or None


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--repo", required=True, help="Dataset repo: org/name or hf://datasets/org/name (created if missing).")
@click.option("--revision", default=None, help="Branch to commit to (created from main if missing). Default: main.")
@click.option("--private", is_flag=True, help="Create the repo private (no effect on an existing repo).")
@click.option("--message", default=None, help="Commit message.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def publish(path, repo, revision, private, message, quiet):
    """Upload the vindex (or lake folder) PATH to a Hub dataset repo, with a generated card.

    Verifies every local file first; uploads only files whose content changed; writes the manifest
    and README.md last, so the repo never lists files it does not have yet.
    """
    from vindex.hub.upload import publish as run
    res = run(path, repo, revision=revision, private=private, message=message, progress=not quiet)
    click.echo(f"published {path} -> {res}")


@click.command()
@click.argument("source")
@click.option("--tables", multiple=True, help="Tables to pull (comma-separated or repeated). Default: all.")
@click.option("--layers", multiple=True, help="Layers to pull: 3, 1,2 or 0-3 (repeatable). Default: all.")
@click.option("--models", multiple=True, help="In a lake repo, the vindexes to pull (name or model id).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder to pull into. Default: the cache ($VINDEX_CACHE/hub, ~/.cache/vindex/hub).")
@click.option("--workers", type=int, default=8, show_default=True, help="Parallel downloads.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def pull(source, tables, layers, models, out, workers, quiet):
    """Download SOURCE (hf://datasets/org/name[@rev][/folder]), or the part of it you ask for.

    Every file is checked against the manifest's sha256 before it is kept; run the same command
    again to resume an interrupted pull. Prints the local folder, ready for `vindex sql`.
    """
    from vindex.hub.download import pull as run
    res = run(source, tables=split_list(tables), layers=parse_layers(layers), models=split_list(models),
              out=out, workers=workers, progress=not quiet)
    click.echo(f"pulled {source} -> {res}")


@click.command("ls")
@click.option("--org", default=None, help="Also list this Hub org's vindex repos (tagged `vindex`).")
@click.option("--collection", default=None, help="Also list the vindex datasets of this Hub collection (slug).")
@click.option("--local/--no-local", default=True, show_default=True, help="List the local cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def ls_(org, collection, local, as_json):
    """List vindexes in the local cache and, with --org/--collection, on the Hub."""
    from vindex.hub import ls as run
    from vindex.summary import human_bytes
    rows = run(org=org, collection=collection, local=local)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no vindexes (pull one with `vindex pull hf://datasets/org/name`)")
        return
    click.echo(f"{'where':<6} {'name':<24} {'model':<32} {'layers':<8} {'size':>10}  location")
    for r in rows:
        layers = f"{r['layers'][0]}-{r['layers'][-1]}" if r.get("layers") else "-"
        flag = " (partial)" if r.get("partial") else ""
        click.echo(f"{r['where']:<6} {r['name']:<24} {str(r.get('model')):<32} {layers:<8} "
                   f"{human_bytes(r.get('bytes') or 0):>10}  {r['location']}{flag}")


COMMANDS = [publish, pull, ls_]
