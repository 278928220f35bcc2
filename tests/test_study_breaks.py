"""The study's "Where convergence breaks" and "Stages": a planted trait among the prompts that pull
CKA down is found (and only then called shared), the trait tests equal scipy's on the stored rows,
planted four-band stages match and three stages do not, and both sections are in the report."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from scipy.stats import fisher_exact, mannwhitneyu

from vindex.query import cka_depth, cka_influence, connect
from vindex.study import analyses as A
from vindex.study.run import study

from influence_lakes import CATEGORIES, write_model, write_staged
from toy_lakes import STUDY, write_toy_lake


def rows_with(top_ids, texts):
    """Prompt rows as convergence_breaks makes them, `top` for the given ids."""
    return [{"prompt_id": i, "category": CATEGORIES[i % 4], "top": i in top_ids, **A.prompt_traits(t)}
            for i, t in enumerate(texts)]


def test_trait_tests_find_a_planted_category_and_equal_scipy():
    texts = [f"prompt {i}" for i in range(40)]
    texts[3] = "Translate into French: le chat"
    rows = rows_with({1, 5, 9, 13, 17, 21}, texts)            # every top prompt is a 'coding' one
    by = {t["trait"]: t for t in A.trait_tests(rows)}
    assert set(by) == {"category = factual", "category = coding", "category = reasoning", "category = translation",
                       "names a language", "length (characters)"}    # no prompt is non-ASCII: not tested
    # Fisher's exact test on the 2 x 2 table, written out: 6 of 6 top vs 4 of 34 rest are coding
    p = fisher_exact([[6, 0], [4, 30]], alternative="greater").pvalue
    assert abs(by["category = coding"]["p_value"] - p) < 1e-15 and p * len(by) < 0.05
    assert by["category = factual"]["p_value"] == 1.0 and by["category = coding"]["top_share"] == 1.0
    assert A.prompt_traits(texts[3]) == {"length": 30, "languages": "French", "names_language": True,
                                         "non_ascii": False}
    lengths = [r["length"] for r in rows]
    u = mannwhitneyu([lengths[i] for i in (1, 5, 9, 13, 17, 21)],
                     [x for i, x in enumerate(lengths) if i not in (1, 5, 9, 13, 17, 21)]).pvalue
    assert abs(by["length (characters)"]["p_value"] - u) < 1e-15


def test_convergence_breaks_at_the_peak(tmp_path):
    write_model(tmp_path, "m-a", 3, 10, seed=1, outlier=[1, 5, 13], scale=6.0)
    write_model(tmp_path, "m-b", 3, 12, seed=2)
    con = connect(tmp_path)
    diag = cka_depth(con, "m-a", "m-b", estimator="debiased")
    prompts, cats, traits = A.convergence_breaks(con, [("m-a", "m-b")], diag, pooling="mean_nosink",
                                                 estimator="debiased", prompt_set="main", top_k=5, permutations=199)
    peak = max(diag.to_pylist(), key=lambda r: r["diagonal"])
    direct = cka_influence(con, "m-a", "m-b", peak["layer_a"], peak["layer_b"])
    assert dict(zip(direct.column("prompt_id").to_pylist(), direct.column("influence").to_pylist())) == \
        {r["prompt_id"]: r["influence"] for r in prompts.to_pylist()}
    top = {r["prompt_id"] for r in prompts.to_pylist() if r["top"]}
    assert len(top) == 5 and {1, 5, 13} <= top                # the planted outliers pull CKA down most
    tests = A.trait_tests(prompts.to_pylist())
    got = traits.to_pylist()
    assert [t["p_value"] for t in got] == [t["p_value"] for t in tests]
    assert all(t["p_adjusted"] == min(1, t["p_value"] * len(got)) and t["shared"] == (t["p_adjusted"] <= 0.05)
               for t in got)
    assert {c["category"] for c in cats.to_pylist()} == set(CATEGORIES)


def test_without_a_planted_trait_nothing_is_called_shared(tmp_path):
    write_model(tmp_path, "m-a", 3, 10, seed=3)
    write_model(tmp_path, "m-b", 3, 12, seed=4)
    con = connect(tmp_path)
    _, _, traits = A.convergence_breaks(con, [("m-a", "m-b")], cka_depth(con, "m-a", "m-b"), pooling="mean_nosink",
                                        estimator="debiased", prompt_set="main", top_k=5, permutations=99)
    assert traits.num_rows >= 4 and not any(traits.column("shared").to_pylist())


def test_stages_beside_the_four_bands(tmp_path):
    write_staged(tmp_path, "four", (5, 5, 6, 4), seed=5)       # 20 layers: one band in each stage
    write_staged(tmp_path, "three", (3, 4, 3), seed=6)
    t = A.model_stages(connect(tmp_path), ["four", "three"], pooling="mean_nosink", estimator="biased",
                       prompt_set="main", permutations=99).to_pylist()
    four = [r for r in t if r["model"] == "four" and r["fit"] == "chosen"]
    assert [(r["first_layer"], r["last_layer"]) for r in four] == [(0, 4), (5, 9), (10, 15), (16, 19)]
    assert [r["bands"] for r in four] == ["broadcast", "domain routing", "entity", "prediction"]
    assert all(r["matches_four"] for r in four) and four[0]["p_value"] == 0.01
    three = [r for r in t if r["model"] == "three"]
    assert {r["n_stages"] for r in three if r["fit"] == "chosen"} == {3}
    assert not any(r["matches_four"] for r in three)
    assert {r["n_stages"] for r in three if r["fit"] == "four given"} == {4}


def test_the_report_has_both_sections(tmp_path):
    lake = write_toy_lake(tmp_path / "lake", STUDY)
    report = study([lake / m.name for m in STUDY.models], tmp_path / "out", permutations=9, progress=False)
    text = report.read_text()
    assert text.index("## Where convergence breaks") < text.index("## Stages") < text.index("## Data")
    assert "### toy-a vs toy-b: layer" in text and "### toy-a (chosen)" in text and "### toy-b (four given)" in text
    for name in ("influence_prompts", "influence_categories", "influence_traits", "stages"):
        assert pq.read_table(report.parent / "data" / f"{name}.parquet").num_rows > 0, name
    traits = pq.read_table(report.parent / "data" / "influence_traits.parquet").to_pylist()
    shared = [t["trait"] for t in traits if t["shared"]]
    assert (f"share: {', '.join(shared)}" in text) if shared else ("No trait is shared" in text)
    assert np.isfinite([t["p_value"] for t in traits]).all()
