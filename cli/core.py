"""`vindex info` and `vindex verify`."""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sys
import warnings

import click

from vindex import info as info_fn
from vindex.integrity import verify_each
from vindex.errors import VindexError, VindexWarning
from vindex.summary import PROVENANCE, human_bytes

# commands that continue where an interrupted run stopped when they are run again
RESUMES = {"build", "weights", "study", "pull", "publish"}
# parameters naming where a command writes, in the order they are looked for
_TARGETS = ("out", "output", "lake", "path")
# errno -> what to do about it
_OS_ADVICE = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space or raise the quota",
    errno.EFBIG: "write to a file system that allows larger files",
    errno.EROFS: "write to a writable folder",
    errno.EACCES: "check the permissions or write elsewhere",
    errno.EPERM: "check the permissions or write elsewhere",
    errno.EIO: "check the disk",
}
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}   # only a write raises these


def show_progress(quiet: bool) -> bool:
    """Whether a command draws progress bars: not with --quiet, and not when stderr is not a terminal
    (a log file or a pipe would collect every carriage-return redraw). The one place the CLI decides it."""
    return not quiet and sys.stderr.isatty()


def fail(e: Exception | str) -> None:
    """Print an error as one clear line and exit 1 (no traceback for user errors)."""
    click.echo(f"error: {e}", err=True)
    sys.exit(1)


def os_error_line(e: OSError, command: str, params: dict) -> str:
    """One line for an OSError (disk full, read-only, permissions): what was being written, the
    errno's text, and what to do. pyarrow's and numpy's write errors carry no file name, so the
    command's output parameter names the place when the error does not."""
    if e.errno is None:                     # raised with a message of our own (e.g. a port in use)
        return str(e)
    where = e.filename or next((str(params[k]) for k in _TARGETS if params.get(k)), None)
    code = errno.errorcode.get(e.errno, str(e.errno))
    todo = _OS_ADVICE.get(e.errno, "fix the cause")
    then = (f"What was committed is intact: {todo}, then rerun the same command; it continues where it "
            "stopped" if command in RESUMES else f"{todo[0].upper()}{todo[1:]}, then rerun the command")
    return (f"{command}: {os.strerror(e.errno)} [{code}]"
            + (f" {'while writing' if e.errno in _WRITE_ERRNOS else 'at'} {where}" if where else "")
            + f". {then}.")


@contextlib.contextmanager
def one_line_warnings():
    """vindex's warnings (PartialData, CKAPairSkipped, ...) print as one `warning:` line on stderr,
    not Python's two-line file:line form; other warnings keep Python's own format."""
    python_format = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None):
        if issubclass(category, VindexWarning):
            return f"warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    warnings.formatwarning = one_line   # the format only: callers recording warnings still get them
    try:
        yield
    finally:
        warnings.formatwarning = python_format


def guard(command: click.Command) -> click.Command:
    """Make `command` end every VindexError and OSError as one line on stderr and exit status 1,
    never a traceback. cli/__init__.py guards every command it registers."""
    callback = command.callback
    if getattr(callback, "vindex_guarded", False):
        return command

    @functools.wraps(callback)
    def guarded(*args, **kwargs):
        try:
            with one_line_warnings():
                return callback(*args, **kwargs)
        except VindexError as e:
            fail(e)
        except OSError as e:
            if e.errno == errno.EPIPE:      # `vindex sql ... | head`: click closes stdout quietly
                raise
            fail(os_error_line(e, command.name, kwargs))

    guarded.vindex_guarded = True
    command.callback = guarded
    return command


@click.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(path, as_json):
    """Show a vindex's model, provenance, layers, tables, sizes and prompt sets (of each vindex, for a
    lake folder)."""
    d = info_fn(path)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    if "lake" in d:
        n = len(d["vindexes"])
        click.echo(f"lake    {d['lake']}  ({n} vindex{'es' if n != 1 else ''})")
        for one in d["vindexes"].values():
            click.echo("")
            _print_info(one)
        return
    _print_info(d)


def _print_info(d: dict) -> None:
    m, prov = d["model"], d["provenance"]
    click.echo(f"vindex  {d['name']}  ({d['path']})")
    click.echo(f"model   {m.get('id')}  family={m.get('family')}  layers={m.get('n_layers')}  "
               f"d_model={m.get('d_model')}  d_ffn={m.get('d_ffn')}  vocab={m.get('vocab_size')}")
    for key in PROVENANCE:
        click.echo(f"  {key + ':':<14}{prov[key]}")
    for name, ps in d["prompt_sets"].items():
        state = f"{ps['n_prompts']} prompts" if ps["complete"] else \
            f"{ps['status']} (an interrupted build: rerun it to resume)"
        click.echo(f"prompts {name}: {state}, sha256 {ps['sha256'][:12]}")
    click.echo(f"{'table':<12} {'files':>6} {'rows':>10} {'size':>10}  layers  vector")
    for name, t in sorted(d["tables"].items()):
        layers = f"{t['layers'][0]}-{t['layers'][-1]}" if t["layers"] else "-"
        vec = f"{t['vector_dtype']}[{t['vector_width']}]" if t["vector_width"] else "-"
        click.echo(f"{name:<12} {t['files']:>6} {t['rows']:>10} {human_bytes(t['bytes']):>10}  {layers:<7} {vec}")
    for g in d.get("grams", []):
        spec = g["spec"] or {}
        state = g["problem"] or (f"{len(g['current'])} current, {len(g['stale'])} stale layer(s)"
                                 + (" (stale: `vindex verify --prune` removes it)" if not g["current"] else ""))
        click.echo(f"grams   {spec.get('table')}/{spec.get('site')} pooling={spec.get('pooling')} "
                   f"estimator={spec.get('estimator')} kernel={spec.get('kernel')} "
                   f"prompt_set={spec.get('prompt_set')}: {state}, {human_bytes(g['bytes'])}")


@click.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--checksums/--no-checksums", default=True, show_default=True,
              help="Check every file's sha256; --no-checksums still checks sizes, schemas and rows.")
@click.option("--prune", is_flag=True, default=False,
              help="First remove from the Gram cache (grams/) what can never be used: damaged entries, temp "
                   "files of a killed write, entries of shards no longer listed.")
def verify(path, checksums, prune):
    """Check every file of a vindex (of each vindex, for a lake folder) against its manifest, and its
    Gram cache entries by their names; exit 1 on any problem."""
    results = verify_each(path, checksums=checksums, prune=prune)
    for folder, problems in results.items():
        for p in problems:
            click.echo(str(p), err=True)
        if problems:
            click.echo(f"{len(problems)} problem(s) in {folder}", err=True)
        else:
            click.echo(f"ok: {folder}")
    bad = [folder for folder, problems in results.items() if problems]
    if len(results) > 1:
        click.echo(f"lake {path}: {len(results) - len(bad)} of {len(results)} vindexes ok"
                   + (f"; problems in {', '.join(bad)}" if bad else ""), err=bool(bad))
    if bad:
        sys.exit(1)


COMMANDS = [info, verify]
