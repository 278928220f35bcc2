"""docs/distributed.md's examples run as written on a local Ray (the `ray_local` fixture), in a copy of
the lake `vindex study --prompts heldout --no-causal` builds (tests/study_lake.py: the real
smollm2-135m and gemma3-270m), and print the results the page shows: a Ray build of the real
SmolLM2, `vindex cka --all --ray` and `cka_all(ray=True)` against `cka_matrix`.

    python tests/test_distributed_docs.py --update     # rewrite the shown results ($VINDEX_STUDY_LAKE's
                                                       # build, or one made now), on a local Ray
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from docs_examples import run_doc_checked, study_lake_here

DOC = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"
AT_LEAST = {"console": 2, "python": 2, "text": 4}


@pytest.mark.integration
def test_docs_examples_run_on_the_study_lake_and_show_their_results(study_lake, ray_local):
    namespace, problems = run_doc_checked(DOC, at_least=AT_LEAST)
    assert not problems, "\n".join(problems) + "\nafter a deliberate change: python tests/test_distributed_docs.py --update"
    # every layer pair of the lake's one model pair, from the CLI's job and the Python one
    for name in ("lake-cka.parquet", "lake-cka-19.parquet"):
        rows = pq.read_table(study_lake / name, columns=["model_a", "model_b", "layer_a", "layer_b"]).to_pylist()
        assert {(r["model_a"], r["model_b"]) for r in rows} == {("gemma3-270m", "smollm2-135m")}
        assert len(rows) == 19 * 31
    assert namespace["table"].num_rows == 19 * 31


if __name__ == "__main__":
    import ray
    with tempfile.TemporaryDirectory() as tmp:
        study_lake_here(Path(tmp))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        _, problems = run_doc_checked(DOC, update="--update" in sys.argv, at_least=AT_LEAST)
        ray.shutdown()
        print("\n".join(problems))
        print(f"docs/{DOC.name}:", "updated" if "--update" in sys.argv else f"{len(problems)} mismatch(es)")
