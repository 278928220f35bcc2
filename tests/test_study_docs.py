"""docs/study.md's examples run as written on the lake `vindex study --prompts heldout --no-causal`
builds (tests/study_lake.py: the real smollm2-135m and gemma3-270m), and print the results the page
shows; the CLI reference matches `vindex study --help`.

    python tests/test_study_docs.py --update     # rewrite the shown results, on $VINDEX_STUDY_LAKE's
                                                 # build or on one made now (about 2 min)
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from docs_examples import assert_cli_reference_matches_help, run_doc_checked, study_lake_here

DOC = Path(__file__).resolve().parents[1] / "docs" / "study.md"
MASKS = (r"\(\d+(?:\.\d+)? s\)",)    # the report line's timing: `report: study-report/report.md (7.1 s)`
AT_LEAST = {"console": 1, "python": 8, "text": 10}


@pytest.mark.integration
def test_docs_examples_run_on_the_study_lake_and_show_their_results(study_lake):
    namespace, problems = run_doc_checked(DOC, at_least=AT_LEAST, masks=MASKS)
    assert not problems, "\n".join(problems) + "\nafter a deliberate change: python tests/test_study_docs.py --update"
    assert namespace["report"] == Path("study-report") / "report.md"
    # the rerun reused the build: still the two vindexes of the study, and the lake card beside them
    assert sorted(p.name for p in (study_lake / "lake").iterdir() if p.is_dir()) == ["gemma3-270m", "smollm2-135m"]
    assert (study_lake / "lake" / "README.md").is_file()


def test_docs_cli_reference_matches_help():
    assert_cli_reference_matches_help(DOC, "study")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        study_lake_here(Path(tmp))
        _, problems = run_doc_checked(DOC, update="--update" in sys.argv, at_least=AT_LEAST, masks=MASKS)
        print("\n".join(problems))
        print(f"docs/{DOC.name}:", "updated" if "--update" in sys.argv else f"{len(problems)} mismatch(es)")
