"""The `vindex` command line: a thin click layer over the public Python functions.

Each area keeps its commands in its own module here (core.py: info, verify; ...). A command
parses options, calls one public library function with the same option names and defaults
(`--quiet` is `progress=False`), and prints. reference.py names each command's function (MIRRORS)
and writes docs/cli.md from the real `--help`; tests/test_cli_mirror.py and test_cli_reference.py
check both. Every command is registered through core.guard: a VindexError or an OSError (a full
disk, a read-only folder) ends as one line and exit status 1, never a traceback. Heavy imports
(torch, duckdb) happen inside the commands, so `vindex --help` stays fast.
"""
from __future__ import annotations

import importlib

import click

from vindex import __version__

from .core import guard

# modules under vindex/cli that contribute commands (each exposes COMMANDS)
COMMAND_MODULES = ["core", "larql", "view", "build", "hub", "query", "weights", "study", "influence", "rosetta", "interventions",
                   "measure", "transplant"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vindex")
def main():
    """vindex: a Parquet data lake of transformer internals, queryable with DuckDB SQL."""


for _name in COMMAND_MODULES:
    for _cmd in importlib.import_module(f"{__name__}.{_name}").COMMANDS:
        main.add_command(guard(_cmd))   # VindexError and OSError (disk full, ...): one line, exit 1
