"""The CLI reference (docs/cli.md), written from the real `--help` of every command.

    python -m vindex.cli.reference > docs/cli.md

MIRRORS names the public Python function(s) each command is a thin shell over: same option names,
same defaults, `--quiet` for `progress=False` (tests/test_cli_mirror.py checks every command
against the signatures; tests/test_cli_reference.py fails when docs/cli.md is stale).
"""
from __future__ import annotations

import sys

import click
from click.testing import CliRunner

from . import main

# help as a terminal of COLUMNS or more columns shows it: click wraps at min(columns, the group's
# max_content_width of 100) - 2
COLUMNS = 100

# command -> the library function(s) it calls, as import paths (resolved only by the tests, so
# that this module, like `vindex --help`, imports neither torch nor duckdb)
MIRRORS: dict[str, tuple[str, ...]] = {
    "ablate": ("vindex.ingest.ablation.ablate",),
    "build": ("vindex.ingest.build",),
    "cka": ("vindex.query.cka_matrix", "vindex.query.cka_depth", "vindex.query.lake_cka.cka_all"),
    "cluster": ("vindex.query.cluster_features",),
    "import-larql": ("vindex.ingest.larql.import_larql",),
    "influence": ("vindex.query.cka_influence", "vindex.query.cka_influence_summary"),
    "info": ("vindex.info",),
    "ls": ("vindex.hub.ls",),
    "measure": ("vindex.query.measure_depth",),
    "publish": ("vindex.hub.publish",),
    "patch": ("vindex.ingest.patching.patch",),
    "pull": ("vindex.hub.pull",),
    "rosetta": ("vindex.query.rosetta",),
    "sql": ("vindex.query.connect",),
    "stages": ("vindex.query.stages",),
    "steer": ("vindex.ingest.steering.steer",),
    "study": ("vindex.study.study",),
    "transplant": ("vindex.ingest.transplant.transplant",),
    "verify": ("vindex.verify",),
    "view": ("vindex.view.view",),
    "weights": ("vindex.ingest.build_weights",),
}

HEADER = """\
# CLI reference

Every `vindex` command is a thin shell over a public Python function with the same options
(option `--foo-bar` is keyword `foo_bar`, with the same default; `--quiet` is `progress=False`);
each section names its function. This page is the real `--help` of every command, written by
`python -m vindex.cli.reference > docs/cli.md`; `tests/test_cli_reference.py` fails when it is
stale, and `tests/test_cli_mirror.py` checks the options against the functions' signatures.
"""


def help_text(*args: str) -> str:
    """What `vindex ARGS... --help` prints in a terminal of COLUMNS columns."""
    res = CliRunner().invoke(main, [*args, "--help"], prog_name="vindex", terminal_width=COLUMNS - 2)
    if res.exit_code != 0:
        raise click.ClickException(f"vindex {' '.join(args)} --help failed: {res.output}")
    return res.output.rstrip("\n")


def render() -> str:
    """The whole of docs/cli.md."""
    names = sorted(main.commands)
    lines = [HEADER, "| command | Python | what it does |", "|---|---|---|"]
    for name in names:
        what = main.commands[name].get_short_help_str(limit=COLUMNS).replace("|", "\\|")  # a table cell
        lines.append(f"| [`vindex {name}`](#vindex-{name}) | {_python(name)} | {what} |")
    lines += ["", "## vindex", "", "```text", help_text(), "```"]
    for name in names:
        lines += ["", f"## vindex {name}", "", f"Python: {_python(name)}", "", "```text", help_text(name), "```"]
    return "\n".join(lines) + "\n"


def _python(name: str) -> str:
    return ", ".join(f"`{f}`" for f in MIRRORS.get(name, ())) or "none"


if __name__ == "__main__":
    sys.stdout.write(render())
