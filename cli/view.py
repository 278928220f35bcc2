"""`vindex view`: write (or serve) the lake's self-contained HTML viewer."""
from __future__ import annotations

import click

from vindex.defaults import DEFAULT_PERMUTATIONS


@click.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", "-o", default="view.html", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the page (one self-contained HTML file).")
@click.option("--model", "models", multiple=True, help="Only these models (repeat; default: all).")
@click.option("--estimator", "estimators", multiple=True, type=click.Choice(["biased", "debiased"]),
              default=("biased", "debiased"), show_default=True, help="CKA estimators to include (repeat).")
@click.option("--pooling", "poolings", multiple=True, help="Poolings to include (repeat; default: all common ones).")
@click.option("--prompt-set", default=None, help="Prompt set CKA aligns on (default: the largest common one).")
@click.option("--permutations", default=DEFAULT_PERMUTATIONS, show_default=True, type=click.IntRange(min=0),
              help="Size of the CKA permutation null (0: none; 99 resolves p < 0.01).")
@click.option("--preprocess", default=None,
              help="CKA preprocessing (none | l2 | clip | clip:99.5; default: the SQL layer's, none).")
@click.option("--max-features", default=256, show_default=True, type=click.IntRange(min=0),
              help="FFN features kept per layer, strongest c_score first (0: all).")
@click.option("--title", default=None, help="Page title (default: the source names).")
@click.option("--serve", is_flag=True, help="Also serve the page on 127.0.0.1 until Ctrl-C.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port for --serve (0: any free port).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def view(sources, out, models, estimators, poolings, prompt_set, permutations, preprocess, max_features,
         title, serve, port, quiet):
    """Write one offline HTML page showing a lake: CKA between two models' layers, features, provenance.

    SOURCES are lake roots, vindex folders or hf:// repos. The page needs no network: open it
    in any browser, attach it to a dataset card, or pass --serve to serve it on 127.0.0.1.
    """
    from vindex.view import view as view_fn  # lazy: duckdb and the SQL layer load only when used
    from .core import fail

    try:
        path = view_fn(*sources, out=out, models=list(models) or None, estimators=estimators,
                       poolings=list(poolings) or None, prompt_set=prompt_set, permutations=permutations,
                       preprocess=preprocess, max_features=max_features, title=title, serve=serve, port=port,
                       progress=not quiet,
                       ready=lambda url: click.echo(f"serving {path_msg(out)} at {url} (Ctrl-C to stop)"))
    except ValueError as e:   # VindexError and OSError: core.guard
        fail(e)
    if not serve:
        size = path.stat().st_size
        click.echo(f"wrote {path} ({size / 1e6:.2f} MB); open it in a browser, no network needed")


def path_msg(out) -> str:
    return str(out) if out else "the page"


COMMANDS = [view]
