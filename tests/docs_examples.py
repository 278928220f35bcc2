"""Run the examples of a docs/*.md page as written, so the docs cannot drift from the code.

Every docs test follows one recipe: the fenced blocks of the page, in order; ```python blocks exec'd
in one shared namespace (later blocks use names defined by earlier ones); each line of a ```console
block is a `$ vindex ...` command run through click. What differs per page (the data set up first,
stand-ins for real models, extra block languages, what is checked afterwards) stays in its test.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path

from click.testing import CliRunner

from vindex.cli import main

PROMPT = "$ vindex "


def fenced_blocks(doc: Path) -> list[tuple[str, str]]:
    """(language, code) of each fenced block of `doc`, in order."""
    return re.findall(r"```(\w+)\n(.*?)```", Path(doc).read_text(), flags=re.S)


def run_doc_examples(doc: Path, *, at_least: Mapping[str, int] | None = None,
                     standins: Mapping[str, str] | None = None,
                     other: Mapping[str, Callable[[str], None]] | None = None) -> dict:
    """Run the blocks of `doc` in order and return the namespace the python blocks filled.

    at_least: minimum number of blocks per language, checked first, so that a page whose examples
      were deleted or mis-fenced fails instead of passing with nothing run.
    standins: model name -> local folder standing in for it: '"name"' in python code and a `name`
      argument of a console line are replaced (tests use tiny random models, not real packages).
    other: language -> callable(code) for further block languages (e.g. sql); other languages
      (text, json, ...) are not run.
    """
    doc, at_least, standins, other = Path(doc), at_least or {}, standins or {}, other or {}
    blocks = fenced_blocks(doc)
    langs = [lang for lang, _ in blocks]
    for lang, n in at_least.items():
        assert langs.count(lang) >= n, f"{doc.name}: {langs.count(lang)} ```{lang} blocks, expected >= {n}"
    namespace: dict = {}
    runner = CliRunner()
    for lang, code in blocks:
        if lang == "python":
            for name, folder in standins.items():
                code = code.replace(f'"{name}"', f'"{folder}"')
            exec(compile(code, str(doc), "exec"), namespace)
        elif lang == "console":
            for line in code.splitlines():
                assert line.startswith(PROMPT), line
                args = [standins.get(a, a) for a in shlex.split(line[len(PROMPT):])]
                res = runner.invoke(main, args)
                assert res.exit_code == 0, f"{line}\n{res.output}"
        elif lang in other:
            other[lang](code)
    return namespace


def assert_cli_reference_matches_help(doc: Path, command: str) -> None:
    """The page's "## CLI reference" block is the start of `vindex <command> --help`, whitespace
    aside (line wrapping depends on the terminal width)."""
    doc = Path(doc)
    res = CliRunner().invoke(main, [command, "--help"], terminal_width=100, prog_name="vindex")
    ref = re.search(r"## CLI reference\n\n```text\n(.*?)```", doc.read_text(), flags=re.S).group(1)
    assert " ".join(res.output.split()).startswith(" ".join(ref.split())), \
        f"docs/{doc.name}'s CLI reference drifted from `vindex {command} --help`"


FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def run_doc_checked(doc: Path, *, update: bool = False, at_least: Mapping[str, int] | None = None,
                    other: Mapping[str, Callable[[str], str | None]] | None = None,
                    masks: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """Run the blocks of `doc` in order, as run_doc_examples does, and check the results it shows.

    A ```text block right after a python, console or `other` block (only blank lines between) is the
    result of that block: what it printed (python: stdout; console: each command's stdout, in order;
    other: what its callable returns). Returns (namespace, mismatches), each mismatch a unified diff
    naming the block; with update=True the page's results are rewritten from this run instead.
    masks: regexes for what a rerun does not reproduce (a timing): a match reads `...` on both sides,
      so the page shows `...` there.
    """
    import contextlib
    import difflib
    import io
    doc, at_least, other = Path(doc), at_least or {}, other or {}
    text = doc.read_text()
    blocks = list(FENCE.finditer(text))
    langs = [b.group(1) for b in blocks]
    for lang, n in at_least.items():
        assert langs.count(lang) >= n, f"{doc.name}: {langs.count(lang)} ```{lang} blocks, expected >= {n}"

    def masked(s: str) -> str:
        for m in masks:
            s = re.sub(m, "...", s)
        return "\n".join(line.rstrip() for line in s.strip("\n").splitlines()) + "\n"

    namespace: dict = {}
    runner = CliRunner()
    mismatches, edits, printed = [], [], None
    for i, b in enumerate(blocks):
        lang, code = b.group(1), b.group(2)
        after_run = i and printed is not None and not text[blocks[i - 1].end():b.start()].strip()
        if lang == "text" and after_run:
            got = masked(printed)
            if update:
                edits.append((b.span(2), got))
            elif masked(code) != got:
                where = f"{doc.name}:{text.count(chr(10), 0, b.start()) + 1}"
                mismatches.append("".join(difflib.unified_diff(masked(code).splitlines(True), got.splitlines(True),
                                                               f"{where} (shown)", f"{where} (this run)")))
        printed = None
        if lang == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, str(doc), "exec"), namespace)  # noqa: S102 (our own docs)
            printed = out.getvalue()
        elif lang == "console":
            printed = ""
            for line in code.splitlines():
                assert line.startswith(PROMPT), line
                res = runner.invoke(main, shlex.split(line[len(PROMPT):]))
                assert res.exit_code == 0, f"{line}\n{res.output}"
                printed += res.stdout
        elif lang in other:
            printed = other[lang](code) or ""
    if update:
        for (a, z), new in sorted(edits, reverse=True):
            text = text[:a] + new + text[z:]
        doc.write_text(text)
    return namespace, mismatches


def study_lake_here(folder: Path) -> Path:
    """For `python tests/test_<page>_docs.py --update`: copy the study's lake ($VINDEX_STUDY_LAKE, or
    a build made now) into `folder` and make it the working folder, as the `study_lake` fixture does."""
    import os

    from study_lake import build_study_lake, copy_study_lake, reused_build
    master = reused_build() or build_study_lake(Path(folder) / "build")
    copy_study_lake(master, folder)
    os.chdir(folder)
    return Path(folder)
