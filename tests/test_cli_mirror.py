"""Every `vindex` command mirrors the public function(s) it calls (vindex.cli.reference.MIRRORS):
each option is a keyword of a mirrored function with the same name (`--foo-bar` is `foo_bar`) and
the same default, each keyword of the functions is an option, and the arguments keep the
functions' order; `--quiet` is `progress=False`. The exceptions are listed below, each with its
reason. An option added to one side only fails."""
from __future__ import annotations

import importlib
import inspect

import click
import pytest

from vindex.cli import main
from vindex.cli.reference import MIRRORS

TOKEN = "never an option: it would land in the shell history; huggingface_hub reads HF_TOKEN or `hf auth login`"

# options that are no keyword of the function: how the command prints, or which function it picks
CLI_ONLY = {
    "info": {"as_json": "prints the summary as JSON instead of text"},
    "ls": {"as_json": "prints the rows as JSON instead of a table"},
    "sql": {"query": "the SQL that runs on the connection (text, a .sql file, stdin or a shell)",
            "fmt": "how the result is printed or saved", "output": "where the result is saved",
            "max_rows": "rows printed by --format table", "interactive": "opens the shell",
            "quiet": "turns off DuckDB's progress bar on the command's connection; connect draws none"},
    "cka": {"by_depth": "picks cka_depth instead of cka_matrix", "plot": "draws the matrix with vindex.query.plot",
            "fmt": "how the result is printed", "all_pairs": "picks cka_all over every pair of the lake"},
    "influence": {"by_category": "picks cka_influence_summary instead of cka_influence",
                  "top": "how many prompts are printed", "fmt": "how the result is printed",
                  "quiet": "turns off DuckDB's progress bar on the command's connection; the function draws none"},
    "measure": {"fmt": "how the result is printed",
                "quiet": "turns off DuckDB's progress bar on the command's connection; the function draws none"},
    "stages": {"fmt": "how the result is printed", "quiet": "turns off DuckDB's progress bar on the command's connection; the function draws none"},
    "transplant": {"fmt": "how the result is printed", "output": "where the result table is also saved"},
    "ablate": {"lakes": "the lake a --features SQL query runs on; ablate takes the (layer, feature) pairs"},
    "steer": {"lakes": "the lake a --direction SQL query runs on; steer takes the vector"},
    "cluster": {"output": "where every feature's cluster is saved",
                "quiet": "turns off DuckDB's progress bar and the file note; cluster_features draws none"},
}
# keywords that are no option
LIBRARY_ONLY = {
    "publish": {"token": TOKEN},
    "pull": {"token": TOKEN},
    "ls": {"token": TOKEN},
    "view": {"ready": "a callback: the command passes one that prints the served URL"},
    "build": {"model": "a loaded Python model object: the command line names its model by SOURCE",
              "tokenizer": "goes with model=, a Python object"},
    "sql": {"database": "the command's session is in memory; a DuckDB file is for Python use",
            "functions": "the command always registers the SQL functions"},
    "cka": {"models": "cka_all's models= are MODEL_A MODEL_B given with --all",
            "pairs": "cka_all's pairs= is [(MODEL_A, MODEL_B)] given with --ray",
            "runtime_env": "a dict for ray.init; from the shell it comes with `ray job submit --runtime-env-json`"},
}
# options standing for keywords of another name
RENAMED = {
    # -l/--lake (repeatable; default $VINDEX_LAKE, else '.') opens the connection the functions take
    "lakes": ("con_or_sources", "sources"),
    "quiet": ("progress",),   # --quiet = progress=False
}
# options whose default differs from the keyword's on purpose
DEFAULT_EXCEPTIONS = {
    ("build", "source"): "required on the command line; in Python model= may stand for it",
    ("cka", "model_a"): "optional on the command line: --all needs no pair",
    ("cka", "model_b"): "optional on the command line: --all needs no pair",
}

REQUIRED = "<required>"


def functions(name):
    out = []
    for path in MIRRORS[name]:
        module, _, attr = path.rpartition(".")
        out.append((path, getattr(importlib.import_module(module), attr)))
    return out


def normal(value):
    """Compare a CLI default with a keyword default: 'a,b' is ('a', 'b'), a list a tuple, () is None."""
    if isinstance(value, str) and "," in value:
        value = tuple(v.strip() for v in value.split(","))
    if isinstance(value, list | tuple):
        value = tuple(value) or None
    return value


def cli_defaults(name, command) -> dict:
    """The values the command's callback gets when no option is given (REQUIRED where it needs one)."""
    # under the group's context: a context without it would make click cache a help option
    # without -h on the command, and later `--help` output would differ
    parent = click.Context(main, info_name="vindex", **main.context_settings)
    ctx = command.make_context(name, [], parent=parent, resilient_parsing=True)
    return {p.name: REQUIRED if p.required else ctx.params[p.name] for p in command.params}


def flag_names(p: click.Parameter) -> set[str]:
    """The keyword names a parameter's spelling stands for: --foo-bar -> foo_bar; a repeatable
    --model also stands for models."""
    if isinstance(p, click.Argument):
        return {p.name}
    names = {o.lstrip("-").replace("-", "_") for o in p.opts if o.startswith("--")}
    return names | ({n + "s" for n in names} if p.multiple else set())


def mismatches(name: str, command: click.Command, funcs) -> list[str]:
    """Everything that keeps `command` from mirroring `funcs` (a list of (path, function))."""
    problems = []
    cli_only, lib_only = CLI_ONLY.get(name, {}), LIBRARY_ONLY.get(name, {})
    sigs = [(path, inspect.signature(f).parameters) for path, f in funcs]
    keywords = {k for _, ps in sigs for k, p in ps.items() if p.kind is not p.VAR_KEYWORD}
    params = {p.name: p for p in command.params if p.name not in ("help", "version")}
    defaults = cli_defaults(name, command)
    covered = set()
    for opt, p in params.items():
        targets = RENAMED.get(opt, (opt,))
        hits = [t for t in targets if t in keywords]
        if opt in cli_only:
            if hits:
                problems.append(f"{name}: {opt} is listed as CLI-only but {hits[0]} is a keyword")
            continue
        if not hits:
            problems.append(f"{name}: option {opt} ({'/'.join(p.opts)}) is no keyword of "
                            f"{', '.join(MIRRORS[name])}")
            continue
        covered.update(hits)
        if opt not in RENAMED and opt not in flag_names(p):
            problems.append(f"{name}: option {'/'.join(p.opts)} is spelled differently from keyword {opt}")
        for path, ps in sigs:
            for t in hits:
                if t not in ps or opt == "lakes":
                    continue
                kw = ps[t]
                if kw.kind is kw.VAR_POSITIONAL:
                    if not (p.nargs == -1 or getattr(p, "multiple", False)):
                        problems.append(f"{name}: {opt} takes one value but {path}(*{t}) takes many")
                    continue
                want = REQUIRED if kw.default is kw.empty else kw.default
                got = defaults[opt]
                if opt == "quiet":
                    ok = got is False and want is True
                else:
                    ok = normal(got) == normal(want)
                if not ok and (name, opt) not in DEFAULT_EXCEPTIONS:
                    problems.append(f"{name}: {'/'.join(p.opts)} defaults to {got!r} but {path}'s {t} "
                                    f"to {want!r}")
    args = [p.name for p in command.params if isinstance(p, click.Argument) and p.name not in cli_only]
    for path, ps in sigs:
        if set(args) <= set(ps) and [k for k in ps if k in args] != args:
            problems.append(f"{name}: arguments {args} are not in the order of {path}'s parameters")
    for k in sorted(keywords - covered):
        if k not in lib_only:
            problems.append(f"{name}: keyword {k} of {', '.join(p for p, ps in sigs if k in ps)} has no option")
    for k in sorted(set(lib_only) & covered):
        problems.append(f"{name}: {k} is listed as library-only but an option sets it")
    for k in sorted(set(lib_only) - keywords):
        problems.append(f"{name}: {k} is listed as library-only but no mirrored function has it")
    for k in sorted(set(cli_only) - set(params)):
        problems.append(f"{name}: {k} is listed as CLI-only but the command has no such option")
    return problems


def test_every_command_names_its_functions():
    assert set(MIRRORS) == set(main.commands), \
        "vindex.cli.reference.MIRRORS must name the library function(s) of every command, and only those"
    assert set(CLI_ONLY) | set(LIBRARY_ONLY) <= set(main.commands)
    assert {c for c, _ in DEFAULT_EXCEPTIONS} <= set(main.commands)


@pytest.mark.parametrize("name", sorted(main.commands))
def test_command_mirrors_its_function(name):
    assert mismatches(name, main.commands[name], functions(name)) == []


def test_an_option_on_one_side_only_fails():
    """The check itself: an extra option, an extra keyword, a changed default and a renamed option
    are each caught."""
    command = main.commands["pull"]
    (path, fn), = functions("pull")
    assert mismatches("pull", command, [(path, fn)]) == []

    extra_option = click.Command("pull", params=[*command.params, click.Option(["--retries"], type=int, default=3)])
    assert mismatches("pull", extra_option, [(path, fn)]) == \
        [f"pull: option retries (--retries) is no keyword of {path}"]

    def with_keyword(*args, retries: int = 3, **kwargs):
        return fn(*args, **kwargs)
    sig = inspect.signature(fn)
    with_keyword.__signature__ = sig.replace(parameters=[
        *sig.parameters.values(), inspect.Parameter("retries", inspect.Parameter.KEYWORD_ONLY, default=3)])
    assert mismatches("pull", command, [(path, with_keyword)]) == [f"pull: keyword retries of {path} has no option"]

    changed = [click.Option(["--workers"], type=int, default=4) if p.name == "workers" else p for p in command.params]
    assert mismatches("pull", click.Command("pull", params=changed), [(path, fn)]) == \
        [f"pull: --workers defaults to 4 but {path}'s workers to 8"]

    renamed = [click.Option(["--jobs", "workers"], type=int, default=8) if p.name == "workers" else p
               for p in command.params]
    assert mismatches("pull", click.Command("pull", params=renamed), [(path, fn)]) == \
        ["pull: option --jobs is spelled differently from keyword workers"]


def test_arguments_keep_the_functions_order():
    (path, fn), = functions("build")
    command = main.commands["build"]
    swapped = click.Command("build", params=[command.params[1], command.params[0], *command.params[2:]])
    assert mismatches("build", swapped, [(path, fn)]) == \
        [f"build: arguments ['out', 'source'] are not in the order of {path}'s parameters"]
