"""The README's quick tour runs as written on the lake `vindex study --prompts heldout --no-causal`
builds (tests/study_lake.py): its `vindex` lines from "Every command and example in the rest of this tour" to the next section
through click, its fenced blocks in order with the results they show checked.

    python tests/test_readme.py --update     # rewrite the shown results ($VINDEX_STUDY_LAKE's build, or one made now)
"""
from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from docs_examples import run_doc_checked, study_lake_here
from vindex.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_tour_commands() -> list[list[str]]:
    """The argument lists of the quick tour's indented `vindex ...` lines that run on the study lake."""
    text = README.read_text()
    tour = text[text.index("Every command and example in the rest of this tour"):text.index("\n## ", text.index("## Quick tour"))]
    return [shlex.split(line.strip()[len("vindex "):].split("  #")[0])
            for line in tour.splitlines() if line.startswith("    vindex ")]


@pytest.mark.integration
def test_quick_tour_commands_run_on_the_study_lake(study_lake):
    commands = quick_tour_commands()
    assert [c[0] for c in commands] == ["info", "verify", "sql", "cka"], commands
    outputs = {}
    for args in commands:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, f"vindex {shlex.join(args)}\n{res.output}"
        outputs[args[0]] = res.stdout
    assert "smollm2-135m" in outputs["info"] and "layers" in outputs["info"]
    assert outputs["sql"].count("│ smollm2-135m │ gemma3-270m │") >= 10     # a row per layer of smollm2-135m
    assert (study_lake / "cka.png").stat().st_size > 10_000


@pytest.mark.integration
def test_readme_examples_run_on_the_study_lake_and_show_their_results(study_lake):
    namespace, problems = run_doc_checked(README, at_least={"python": 1})
    assert not problems, "\n".join(problems) + "\nafter a deliberate change: python tests/test_readme.py --update"
    assert namespace["pooled"].num_rows == 3 * 64        # mean, last, mean_nosink per held-out prompt


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        study_lake_here(Path(tmp))
        _, problems = run_doc_checked(README, update="--update" in sys.argv)
        print("\n".join(problems))
        print("README.md:", "updated" if "--update" in sys.argv else f"{len(problems)} mismatch(es)")
