"""docs/view.md's examples run as written on the lake `vindex study --prompts heldout --no-causal` builds
(tests/study_lake.py: the real smollm2-135m and gemma3-270m), and print the results the page shows:
`vindex view lake`'s size, the page's feature index over every feature of every layer, the provenance,
and the edges the page opens on.

    python tests/test_view_docs.py --update      # rewrite the shown results, on $VINDEX_STUDY_LAKE's
                                                 # build or on one made now (about 2 min)
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import pytest

from docs_examples import run_doc_checked, study_lake_here

DOC = Path(__file__).resolve().parents[1] / "docs" / "view.md"
AT_LEAST = {"python": 4, "console": 1, "text": 3}


@pytest.mark.integration
def test_docs_examples_run_on_the_study_lake_and_show_their_results(study_lake):
    namespace, problems = run_doc_checked(DOC, at_least=AT_LEAST)
    assert not problems, "\n".join(problems) + "\nafter a deliberate change: python tests/test_view_docs.py --update"
    assert namespace["path"] == Path("view.html")
    # the search index covers every feature of every layer and model: as many as the lake's features table
    from vindex.query import connect
    counts = dict(connect("lake").sql("SELECT model, count(*) FROM features GROUP BY model").fetchall())
    index = namespace["index"]["models"]
    assert {m: sum(len(r["feature"]) for r in layers.values()) for m, layers in index.items()} == counts
    assert sum(counts.values()) == 82_944
    assert Path("view.html").stat().st_size < 20e6, "the page is no longer a sane size: index or lazy-load it"
    # the provenance in words, as `vindex info` says it: a 4-bit GGUF dequantized, the Instruct variant
    prov = {m["name"]: m["provenance"] for m in namespace["data"]["models"]}
    assert "dequantized" in prov["smollm2-135m"]["quantization"] and prov["smollm2-135m"]["variant"].startswith("instr")
    assert prov["gemma3-270m"]["license"].startswith("gemma")
    # build_payload as the page shows it: one estimator, one pooling, 19 permutations
    only = namespace["payload"]["cka"]
    assert {(e["estimator"], e["pooling"], e["permutations"]) for e in only} == {("debiased", "mean_nosink", 19)}
    assert json.loads(re.search(r'id="vindex-data">(.*?)</script>', Path("debiased.html").read_text(), re.S)
                      .group(1))["feature_index"]["models"].keys() == counts.keys()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        study_lake_here(Path(tmp))
        _, problems = run_doc_checked(DOC, update="--update" in sys.argv, at_least=AT_LEAST)
        print("\n".join(problems))
        print(f"docs/{DOC.name}:", "updated" if "--update" in sys.argv else f"{len(problems)} mismatch(es)")
