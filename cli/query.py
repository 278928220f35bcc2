"""`vindex sql`, `vindex cka` and `vindex cluster`: thin shells over vindex.query.

Every command takes the lake with -l/--lake (repeatable: vindex folders or lake roots; default:
$VINDEX_LAKE, else the current folder). duckdb and the query package are imported inside the
commands so that `vindex --help` stays fast.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from vindex.defaults import DEFAULT_ESTIMATOR, DEFAULT_PERMUTATIONS, DEFAULT_POOLING
from vindex.errors import VindexError
from .core import fail as core_fail
from .core import show_progress

FORMATS = ["table", "csv", "json", "parquet"]


def lake_option(f):
    return click.option("-l", "--lake", "lakes", multiple=True, envvar="VINDEX_LAKE", type=click.Path(),
                        help="A vindex folder or lake root (repeat for several; default: $VINDEX_LAKE, else '.').")(f)


def open_lake(lakes, quiet: bool = False):
    """The connection of a command; DuckDB's own progress bar only with a terminal and without --quiet."""
    from vindex.query import connect
    con = connect(*(lakes or (".",)))
    if not show_progress(quiet):
        con.execute("SET enable_progress_bar = false")
    return con


def fail(e: Exception, con=None) -> None:
    """One clear line for user errors (VindexError, DuckDB errors), no traceback; exit 1. A refusal
    DuckDB wraps ("Invalid Input Error: InvalidValue: ...", a UDF's stack) prints as the vindex
    error it carries (`error_from_message`); with the connection `con`, a pooling a model lacks is
    followed by the poolings it has."""
    from vindex.errors import error_from_message
    error = error_from_message(str(e), ANALYSES)
    if error is not None and con is not None:
        from vindex.query.analyses import with_poolings
        error = with_poolings(con, error)
    msg = str(error or str(e).split("\n\nAt:\n")[0])
    core_fail(msg.replace("Python exception occurred while executing the UDF: ", ""))


# the SQL table functions whose own refusals start "<name>: " (error_from_message unwraps them)
ANALYSES = ("cka_matrix", "cka_depth", "cka_token_matrix", "mutual_knn_matrix", "kmeans", "cka_influence",
            "cka_influence_summary", "stages")


def note(text: str) -> None:
    """One `note:` line on stderr: a caveat that belongs with a printed result (not hidden by --quiet)."""
    click.echo(f"note: {text}", err=True)


def confound_notes(table, con=None) -> list[str]:
    """The known confounds of a CKA result (docs: README "Defaults"): last-token pooling at shallow
    depth (< 40%) is mostly the identity of the prompts' last token (punctuation); mean pooling
    includes the first content token, an attention sink in models without a BOS token."""
    out = []
    pooling = table.column("pooling")[0].as_py() if table.num_rows and "pooling" in table.column_names else None
    if pooling == "last":
        out.append("last-token CKA below 40% depth mostly measures which token ends the prompts "
                   "(punctuation identity); see pooling mean_nosink, or `vindex study`'s last-token control")
    elif pooling == "mean":
        out.append("mean pooling includes the first content token, an attention sink in models without a "
                   "BOS token (SmolLM2), which can erase depth correspondence; mean_nosink drops it")
    if "permutations" in table.column_names and table.num_rows and table.column("permutations")[0].as_py() == 0:
        out.append("no permutation null (--permutations 0): these values carry no p-value")
    return out


def user_errors():
    import duckdb
    return (VindexError, duckdb.Error, ValueError)


# -- output -------------------------------------------------------------------------------------
def write_result(con, sql: str, fmt: str, output: str | None, max_rows: int = 40) -> None:
    """Run one SELECT and print or save its result in `fmt`."""
    if fmt == "table":
        rel = con.sql(sql)
        if rel is None:
            click.echo("ok")
            return
        if output:
            Path(output).write_text(str(rel))
        else:
            click.echo(rel.__str__() if max_rows is None else _table_text(rel, max_rows))
        return
    if fmt == "parquet" and not output:
        raise click.UsageError("--format parquet needs --output FILE")
    options = {"csv": "FORMAT csv, HEADER", "json": "FORMAT json, ARRAY true", "parquet": "FORMAT parquet"}[fmt]
    with tempfile.TemporaryDirectory() as tmp:
        target = output or str(Path(tmp) / f"out.{fmt}")
        con.execute(f"COPY ({sql.strip().rstrip(';')}) TO '{_quote(target)}' ({options})")
        if not output:
            click.echo(Path(target).read_text(), nl=False)


def _table_text(rel, max_rows: int) -> str:
    import io
    from contextlib import redirect_stdout
    buf = io.StringIO()
    with redirect_stdout(buf):
        rel.show(max_rows=max_rows, max_width=10_000)
    return buf.getvalue().rstrip("\n")


def _quote(s: str) -> str:
    return s.replace("'", "''")


def run_script(con, text: str, fmt: str, output: str | None, max_rows: int) -> None:
    """Run every statement; the last one's result is printed (or saved)."""
    import duckdb
    statements = [s.query for s in duckdb.extract_statements(text)]
    if not statements:
        raise click.UsageError("no SQL statement given")
    for s in statements[:-1]:
        con.execute(s)
    write_result(con, statements[-1], fmt, output, max_rows)


# -- commands -----------------------------------------------------------------------------------
@click.command()
@click.argument("query", required=False)
@lake_option
@click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Output format (parquet needs --output).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the result to this file.")
@click.option("--max-rows", default=40, show_default=True, type=click.IntRange(min=1),
              help="Rows shown by --format table.")
@click.option("-i", "--interactive", is_flag=True, help="Open the shell even when stdin is not a terminal.")
@click.option("--quiet", is_flag=True, help="No progress bar (none either when stderr is not a terminal).")
def sql(query, lakes, fmt, output, max_rows, interactive, quiet):
    """Run SQL over a lake: QUERY is SQL text or a .sql file; without QUERY, SQL piped on stdin or
    an interactive shell.

    \b
    vindex sql -l lake "SELECT model, count(*) FROM pooled GROUP BY model"
    vindex sql -l lake "SELECT * FROM cka_matrix('a', 'b', permutations := 99)" -f csv
    vindex sql -l lake analysis.sql -f parquet -o out.parquet
    """
    con = None
    try:
        con = open_lake(lakes, quiet)
        if query is None:
            if not interactive and not sys.stdin.isatty():  # piped SQL: run it as a script
                return run_script(con, sys.stdin.read(), fmt, output, max_rows)
            return shell(con, max_rows)
        if query.endswith(".sql") and Path(query).is_file():
            query = Path(query).read_text()
        run_script(con, query, fmt, output, max_rows)
    except user_errors() as e:
        fail(e, con)


def shell(con, max_rows: int = 40) -> None:
    """A small REPL: statements end with ';'. Dot commands: .tables, .models, .help, .quit"""
    try:
        import readline  # noqa: F401  (line editing and history where available)
    except ImportError:
        pass
    import duckdb
    click.echo("vindex SQL shell: end statements with ';'. .tables  .models  .help  .quit")
    buf: list[str] = []
    while True:
        try:
            line = input("vindex> " if not buf else "   ...> ")
        except EOFError:
            click.echo()
            return
        except KeyboardInterrupt:
            click.echo()
            buf = []
            continue
        stripped = line.strip()
        if not buf and stripped.startswith("."):
            cmd = stripped.split()[0]
            if cmd in (".quit", ".exit", ".q"):
                return
            sql_text = {".tables": "SELECT table_schema AS schema, table_name AS name FROM information_schema.tables "
                                   "WHERE table_schema = 'main' ORDER BY name",
                        ".models": "SELECT model, model_id, n_layers, d_model, tables FROM models ORDER BY model"}.get(cmd)
            if sql_text is None:
                click.echo("dot commands: .tables  .models  .quit   (see docs/sql.md for the functions)")
            else:
                click.echo(_table_text(con.sql(sql_text), max_rows))
            continue
        buf.append(line)
        if not stripped.endswith(";"):
            continue
        text, buf = "\n".join(buf), []
        try:
            run_script(con, text, "table", None, max_rows)
        except (VindexError, duckdb.Error, click.UsageError) as e:
            click.echo(f"error: {str(e).split(chr(10) * 2 + 'At:')[0]}", err=True)


@click.command()
@click.argument("model_a", required=False)
@click.argument("model_b", required=False)
@lake_option
@click.option("--pooling", default=DEFAULT_POOLING, show_default=True,
              help="Which pooled rows (pooled.pooling): mean, last or mean_nosink; why the default, see README, "
                   "Defaults.")
@click.option("--estimator", default=DEFAULT_ESTIMATOR, show_default=True, type=click.Choice(["biased", "debiased"]))
@click.option("--kernel", default="linear", show_default=True, help="linear, rbf or rbf:<fraction of median distance>.")
@click.option("--preprocess", default="none", show_default=True, help="none, l2, clip or clip:<percentile>.")
@click.option("--prompt-set", default=None, help="Only this prompt set (default: all the models share).")
@click.option("--permutations", default=DEFAULT_PERMUTATIONS, show_default=True, type=click.IntRange(min=0),
              help="Permutation null size (99 resolves p <= 0.01; 0: no null).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--depth", "by_depth", is_flag=True, help="Print the matched-depth diagonal and off-diagonal band instead.")
@click.option("--band", default=0.15, show_default=True, type=float,
              help="With --depth: |depth_a - depth_b| from which a layer pair counts as off-diagonal.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a heatmap PNG here.")
@click.option("-f", "--format", "fmt", type=click.Choice(["grid", "table", "csv", "json"]), default="grid",
              show_default=True, help="grid: layers of A down, layers of B across; table/csv/json: one row per pair.")
@click.option("--all", "all_pairs", is_flag=True,
              help="Every model pair of the lake at once (vindex.query.lake_cka.cka_all); see -o.")
@click.option("--ray", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Compute the Grams and pairs as Ray tasks: --ray alone uses RAY_ADDRESS or a local cluster; "
                   "or ray://head:10001, auto, local (needs the `distributed` extra).")
@click.option("-o", "--out", "--output", "out", type=click.Path(dir_okay=False),
              help="With --all / --ray: write the result table here as Parquet (query it with vindex sql).")
@click.option("--quiet", is_flag=True, help="No progress bar and no file notes (none either when stderr is not a "
                                         "terminal); confound notes still print.")
@click.option("--allow-partial", is_flag=True,
              help="Compare a prompt set whose build was cut off, over the prompts both models hold (else an error).")
def cka(model_a, model_b, lakes, pooling, estimator, kernel, preprocess, prompt_set, permutations, seed, by_depth,
        band, plot, fmt, all_pairs, ray, out, quiet, allow_partial):
    """CKA between every layer of MODEL_A and every layer of MODEL_B (is it above chance? use --permutations).

    \b
    vindex cka -l lake gemma3-270m qwen2.5-0.5b --plot cka.png   # mean_nosink, debiased, 99 permutations
    vindex cka -l lake --all --ray -o lake-cka.parquet      # every pair of the lake, on Ray
    """
    if all_pairs or ray is not None:
        return cka_all_command(model_a, model_b, lakes, all_pairs, ray, out, by_depth, plot, fmt,
                               dict(pooling=pooling, estimator=estimator, kernel=kernel, preprocess=preprocess,
                                    prompt_set=prompt_set, permutations=permutations, seed=seed,
                                    progress=show_progress(quiet), allow_partial=allow_partial), quiet)
    if not (model_a and model_b):
        raise click.UsageError("give MODEL_A and MODEL_B, or --all for every pair of the lake")
    from vindex.query import cka_depth, cka_matrix
    try:
        con = open_lake(lakes, quiet)
        options = dict(pooling=pooling, estimator=estimator, kernel=kernel, preprocess=preprocess,
                       prompt_set=prompt_set, permutations=permutations, seed=seed, allow_partial=allow_partial)
        table = cka_matrix(con, model_a, model_b, **options)
        if plot:
            from vindex.query.plot import heatmap
            heatmap(table, plot)
        if by_depth:
            depth = cka_depth(con, model_a, model_b, **options, band=band)
            print_rows(con, depth, ["layer_a", "depth_a", "layer_b", "depth_b", "diagonal", "off_mean", "margin",
                                    "null_p95", "p_value"], "table" if fmt == "grid" else fmt)
        elif fmt == "grid":
            click.echo(grid_text(table))
        else:
            print_rows(con, table, None, fmt)
        if fmt in ("grid", "table"):   # csv/json are for machines: their rows carry the pooling
            for text in confound_notes(table):
                note(text)
        if plot and not quiet:
            click.echo(f"heatmap: {plot}", err=True)
    except user_errors() as e:
        fail(e)


def cka_all_command(model_a, model_b, lakes, all_pairs, ray, out, by_depth, plot, fmt, options, quiet=False):
    """`vindex cka --all` / `--ray`: a thin shell over vindex.query.lake_cka.cka_all."""
    if by_depth or plot:
        raise click.UsageError("--depth and --plot take one pair without --all/--ray; query the -o table instead")
    if not all_pairs and not (model_a and model_b):
        raise click.UsageError("--ray needs MODEL_A and MODEL_B, or --all")
    from vindex.query.lake_cka import cka_all
    models = [m for m in (model_a, model_b) if m] or None
    try:
        table = cka_all(*(lakes or (".",)), models=models if all_pairs else None,
                        pairs=None if all_pairs else [(model_a, model_b)], ray=ray, out=out, **options)
        if table.num_rows == 0:
            raise VindexError("no model pair could be compared (see the warnings above)")
        if fmt in ("grid", "table"):
            for text in confound_notes(table):
                note(text)
        if fmt != "grid":
            import duckdb
            return print_rows(duckdb.connect(), table, None, fmt)
        if not all_pairs:
            return click.echo(grid_text(table))
        import duckdb
        con = duckdb.connect()
        con.register("t", table)
        click.echo(_table_text(con.sql(
            "SELECT model_a, model_b, count(DISTINCT layer_a) AS layers_a, count(DISTINCT layer_b) AS layers_b, "
            "round(max(cka), 4) AS max_cka, round(avg(cka), 4) AS mean_cka FROM t GROUP BY ALL ORDER BY ALL"), 10_000))
        if not quiet:
            click.echo(f"result: {out}" if out else "(add -o FILE.parquet to keep the full table)", err=True)
    except user_errors() as e:
        fail(e)


def grid_text(table) -> str:
    """The matrix as text: one line per layer of A, a column per layer of B, depths in the margins."""
    from vindex.query.plot import matrix_grid
    la, lb, da, db, grid, pvals = matrix_grid(table)
    a, b = table.column("model_a")[0].as_py(), table.column("model_b")[0].as_py()
    opts = ", ".join(f"{k}={table.column(k)[0].as_py()}" for k in ("pooling", "estimator", "kernel", "preprocess",
                                                                   "permutations") if k in table.column_names)
    lines = [f"CKA  rows: {a} layer (depth)  columns: {b} layer  [{opts}]" +
             ("  * = p <= 0.01" if pvals is not None else "")]
    lines.append(" " * 13 + "".join(f"{v:>6}" for v in lb))
    lines.append(" " * 13 + "".join(f"{d:>6.2f}" for d in db))
    for i, layer in enumerate(la):
        cells = []
        for j in range(len(lb)):
            v = grid[i, j]
            star = "*" if pvals is not None and pvals[i, j] <= 0.01 else " "
            cells.append("   nan" if v != v else f"{v:5.2f}{star}")
        lines.append(f"{layer:>4} ({da[i]:4.2f})  " + "".join(cells))
    return "\n".join(lines)


def print_rows(con, table, columns, fmt: str) -> None:
    if columns:
        table = table.select(columns)
    if fmt == "json":
        click.echo(json.dumps(table.to_pylist(), indent=1))
        return
    rel = con.from_arrow(table)
    if fmt == "csv":
        import pyarrow.csv as pcsv
        import io
        out = io.BytesIO()
        pcsv.write_csv(table, out)
        click.echo(out.getvalue().decode(), nl=False)
    else:
        click.echo(_table_text(rel, 10_000))


@click.command()
@click.argument("model")
@lake_option
@click.option("--layer", type=int, default=None, help="Only this layer (default: each layer separately).")
@click.option("-k", "--k", "k", default=8, show_default=True, type=click.IntRange(min=1), help="Number of clusters.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-iter", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--against", default=None, help="A features column to compare the clusters with (NMI, AMI), e.g. label.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write every feature's cluster here (.parquet/.csv).")
@click.option("--quiet", is_flag=True, help="No progress bar and no file note (none either when stderr is not a "
                                         "terminal).")
def cluster(model, lakes, layer, k, seed, max_iter, against, output, quiet):
    """k-means (k-means++ init) over MODEL's FFN feature vectors (features.vector), per layer.

    \b
    vindex cluster -l lake gemma3-270m --layer 9 -k 32 --against label -o clusters.parquet
    """
    from vindex.query import cluster_features
    try:
        con = open_lake(lakes, quiet)
        check_layer(con, model, layer)
        clusters, summary = cluster_features(con, model, layer=layer, k=k, seed=seed, max_iter=max_iter,
                                             against=against)
        if output and output.endswith(".csv"):
            con.from_arrow(clusters).write_csv(output, header=True)
        elif output:
            con.from_arrow(clusters).write_parquet(output)
        rounded = ", ".join(f"round({c}, 4) AS {c}" if c in ("inertia", "nmi", "ami") else c
                            for c in summary.column_names)
        click.echo(_table_text(con.from_arrow(summary).project(rounded), 10_000))
        if output and not quiet:
            click.echo(f"clusters: {output}", err=True)
    except user_errors() as e:
        fail(e)


def check_layer(con, model: str, layer: int | None) -> None:
    """InvalidValue naming the layers `model`'s features table has when `layer` is not one of them."""
    if layer is None:
        return
    from vindex.errors import InvalidValue
    lo, hi = con.execute("SELECT min(layer), max(layer) FROM files WHERE model = ? AND table_name = 'features'",
                         [model]).fetchone()
    if lo is not None and not lo <= layer <= hi:
        raise InvalidValue(f"--layer {layer}: {model!r} has features on layers {lo}-{hi}")


COMMANDS = [sql, cka, cluster]
