"""`vindex study` on a real model against itself, kept cheap for CI: it reuses the session's study
build (tests/study_lake.py: smollm2-135m over the 64 held-out prompts, every layer, with `features`),
given as an existing vindex folder, so nothing is ingested again; the causal section patches 8 pairs
at 4 layers. The full default study is measured by hand (docs/study.md)."""
from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from vindex.study.run import study

pytestmark = pytest.mark.integration
LAYERS = (0, 10, 20, 30)        # patched layers (the analyses use every layer the vindex holds)


@pytest.fixture(scope="module")
def real_report(study_build, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study-real")
    shutil.copytree(study_build / "lake" / "smollm2-135m", tmp / "lake" / "smollm2-135m")
    return study([tmp / "lake" / "smollm2-135m"], tmp / "report", lake=tmp / "lake", prompts="heldout",
                 layers=",".join(map(str, LAYERS)), permutations=19, causal_pairs=8, progress=False)


def table(report, name):
    return pq.read_table(report.parent / "data" / f"{name}.parquet").to_pylist()


def test_real_report_structure(real_report):
    text = real_report.read_text()
    for section in ("## Matched depth", "## Per-category CKA", "## Concept clustering", "### Attention sinks",
                    "### Last-token identity", "### Estimator gap", "## Causal"):
        assert section in text
    assert (real_report.parent / "figures" / "cka_smollm2-135m__smollm2-135m__last__debiased.png").is_file()
    assert {r["layer_a"] for r in table(real_report, "cka_depth")} == set(range(31))


def test_real_model_against_itself_has_debiased_cka_one_on_the_diagonal(real_report):
    deb = [r for r in table(real_report, "cka_depth") if r["estimator"] == "debiased"]
    assert deb and all(r["layer_a"] == r["layer_b"] for r in deb)
    assert all(r["diagonal"] == pytest.approx(1.0, abs=1e-6) for r in deb)


def test_real_confounds_and_labels(real_report):
    # SmolLM2 adds no BOS: its first content token is an attention sink in the middle layers
    prof = {(r["layer"], r["position"]): r["mean_norm"] for r in table(real_report, "sink_profile")}
    assert prof[(20, "content 0")] > 10 * prof[(20, "content 3+")]
    labels = table(real_report, "feature_labels")
    assert labels and {r["layer"] for r in labels} <= set(range(1, 31))     # FFN features of block i at layer i
    assert all(r["category"] for r in labels)


def test_real_restoration_is_exact_where_the_architecture_says(real_report):
    # The logits read only the last position's state after the last block, so patching it at layer 30
    # restores the answer fully (1) and patching the subject there changes nothing (0); at layer 0 (the
    # embedding output) the last token is the same in both prompts, so patching it changes nothing (0).
    prof = {(r["position"], r["layer"]): r for r in table(real_report, "causal_profile")}
    assert {layer for _, layer in prof} == set(LAYERS)
    assert prof[("last", 30)]["n_pairs"] > 0
    assert prof[("last", 30)]["restoration"] == pytest.approx(1.0, abs=1e-5)
    assert prof[("subject", 30)]["restoration"] == pytest.approx(0.0, abs=1e-6)
    assert prof[("last", 0)]["restoration"] == pytest.approx(0.0, abs=1e-6)
