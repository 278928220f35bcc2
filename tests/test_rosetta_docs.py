"""Every example of docs/rosetta.md runs on the lake `vindex study --prompts heldout --no-causal` builds
(tests/study_lake.py: the real smollm2-135m and gemma3-270m), and its result is what the page shows:
a SQL result as the markdown table under it (test_query_docs's rendering), a refusal as the message the
page quotes, a ```text block right after a python or console block as what that block printed.

    python tests/test_rosetta_docs.py --update     # rewrite the shown results, on $VINDEX_STUDY_LAKE's
                                                   # build or on one made now (about 2 min)
"""
from __future__ import annotations

import contextlib
import difflib
import io
import re
import shlex
import sys
import tempfile
import warnings
from pathlib import Path

import duckdb
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "rosetta.md"
# a fenced block, then (blank lines aside) either the markdown table or the ```text block that is its result
BLOCK = re.compile(r"```(sql|python|console)\n(.*?)```\n(?:((?:[ \t]*\n)*(?:\|[^\n]*\|\n)+)|(?:[ \t]*\n)*```text\n(.*?)```)?",
                   re.S)
PROMPT = "$ vindex "


def examples(text: str):
    """(kind, code, shown result or None, its span) for each runnable block, in order."""
    for m in BLOCK.finditer(text):
        group = 3 if m.group(3) is not None else 4
        yield m.group(1), m.group(2), m.group(group), m.span(group)


def render(rel) -> str:
    """A result as the page's markdown table: NULL, true/false, floats as the query rounded them."""
    def cell(v):
        return ("NULL" if v is None else ("true" if v else "false") if isinstance(v, bool)
                else repr(round(v, 6)) if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(rel.columns) + " |", "|" + "|".join("---" for _ in rel.columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rel.fetchall()]) + "\n"


def printed_by(kind: str, code: str, namespace: dict) -> str:
    """What a python block (exec'd in `namespace`) or a console block (each `$ vindex ...` line through
    click) printed to stdout."""
    if kind == "python":
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 (our own docs)
        return out.getvalue()
    from click.testing import CliRunner

    from vindex.cli import main
    out = ""
    for line in code.strip().replace("\\\n", " ").splitlines():
        assert line.startswith(PROMPT), line
        res = CliRunner().invoke(main, shlex.split(line[len(PROMPT):]))
        assert res.exit_code == 0, f"{line}\n{res.output}"
        out += res.stdout
    return out


def run_doc(update: bool = False) -> list[str]:
    """Run the page's examples in the working folder (a copy of the study's build: `lake` is its lake);
    returns a readable diff per mismatch, or rewrites the shown results (update=True)."""
    from vindex.query import connect
    text = DOC.read_text()
    con = connect("lake")
    namespace: dict = {}
    problems, edits = [], []
    for kind, code, shown, span in examples(text):
        where = f"{DOC.name}:{text.count(chr(10), 0, text.index(code)) + 1}"
        if kind != "sql":
            got = printed_by(kind, code, namespace)
            con = connect("lake")   # a stored map is a new table: a fresh connection sees it
            if shown is None:
                continue
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    got = render(con.sql(code))
            except duckdb.Error as e:
                quoted = re.search(r"fails with `(.*?)\.\.\.`", text[text.index(code) + len(code):])
                if not quoted or quoted.group(1) not in str(e):
                    problems.append(f"{where}\n{code}\nraised: {e}")
                continue
        if update and shown is not None:
            edits.append((span, "\n" + got if shown.startswith("\n") else got))
        elif update:
            end = text.index(code) + len(code) + len("```\n")
            edits.append(((end, end), "\n" + got))
        elif shown is None or shown.strip() != got.strip():
            problems.append(f"{where}\n{code}" + "".join(difflib.unified_diff(
                (shown or "").strip().splitlines(True), got.strip().splitlines(True), "shown", "this run")))
    if update:
        for (a, b), new in sorted(edits, reverse=True):
            text = text[:a] + new + text[b:]
        DOC.write_text(text)
    return problems


@pytest.mark.integration
def test_every_example_in_docs_rosetta_runs_on_the_study_lake_and_shows_its_result(study_lake):
    blocks = list(examples(DOC.read_text()))
    kinds = [k for k, *_ in blocks]
    assert kinds.count("sql") >= 6 and kinds.count("python") >= 1 and kinds.count("console") >= 1
    problems = run_doc()
    assert not problems, "\n\n".join(problems) + "\nafter a deliberate change: python tests/test_rosetta_docs.py --update"
    # the page's `vindex rosetta --store` wrote the maps both ways, each into its target's vindex
    for target, source in (("gemma3-270m", "smollm2-135m"), ("smollm2-135m", "gemma3-270m")):
        assert (study_lake / "lake" / target / "data" / "maps" / f"model_a={source}" / "method=ridge").is_dir()


def test_readme_links_the_page():
    assert "docs/rosetta.md" in (DOC.parents[1] / "README.md").read_text()


if __name__ == "__main__":
    from docs_examples import study_lake_here
    with tempfile.TemporaryDirectory() as tmp:
        study_lake_here(Path(tmp))
        bad = run_doc(update="--update" in sys.argv)
        print("\n\n".join(bad) or f"docs/{DOC.name}: " + ("updated" if "--update" in sys.argv else "ok"))
