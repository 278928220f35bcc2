"""Partial data (issue 14, defect 7): a build killed halfway is said to be incomplete, with the
number of prompts really there, and no analysis silently runs on part of the prompts.

The lake: the tiny model's uninterrupted build (`llama`, 8 prompts) and two builds of it killed with
SIGKILL right after a manifest commit, `cut-a` early and `cut-b` later (real child processes, as in
test_faults_kill.py), so their manifests are what an interrupted `vindex build` leaves. The prompts
a vindex really holds are counted from its pooled shards with pyarrow, independently.

  * info, `vindex info` and the prompt_sets view must say incomplete and the real count; showing the
    planned count as if it were there is a wrong number;
  * cka_matrix, cka_depth, mutual_knn_matrix, cka_token_matrix (SQL and Python) and `vindex cka`
    must refuse an incomplete prompt set; with allow_partial they must compare the common prompts,
    say how many (`n`, a PartialData warning), and equal numpy's CKA over those prompts.
"""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import fault_child
import fault_harness as fh
from fault_child import build_argv
from vindex.query import cka_depth, cka_matrix

GROUP = "partial data"
TOL = 1e-9


@pytest.fixture(scope="module")
def lake(tiny, references, tmp_path_factory):
    ref = references("build")
    commits = [i for i, e in enumerate(ref.events, 1) if e.endswith("after manifest commit")]
    root = tmp_path_factory.mktemp("partial") / "lake"
    shutil.copytree(ref.root, root / "llama")
    cuts = {}
    for name, at in (("cut-a", commits[len(commits) * 2 // 5]), ("cut-b", commits[len(commits) * 7 // 10])):
        run = fault_child.fork([*build_argv(tiny, root / name), "--name", name], at + 1, root.parent, name)
        assert run.killed, run.output[-2000:]
        cuts[name] = f"SIGKILL right after event {run.events[at - 1]} (of {ref.points})"
    return root, cuts


def held(vx_root) -> set:
    """The prompt ids a vindex's pooled shards hold (pyarrow, not vindex's own count)."""
    m = json.loads((vx_root / "vindex.json").read_text())
    ids = set()
    for e in m["tables"]["pooled"]["files"]:
        ids |= set(pq.read_table(vx_root / e["path"], columns=["prompt_id"]).column("prompt_id").to_pylist())
    return ids


def _sql(root, q):
    from vindex.query import connect
    r = connect(root).sql(q).arrow()
    return r.read_all() if hasattr(r, "read_all") else r


@pytest.mark.parametrize("name", ["cut-a", "cut-b"])
def test_info_says_incomplete_with_the_real_count(verdict, lake, name):
    import vindex
    root, cuts = lake
    verdict.injected(f"{name}: {cuts[name]}")
    real = len(held(root / name))

    def says(info):
        ps = info["prompt_sets"]["a"]
        ok = (ps["complete"] is False and ps.get("n_present") == real
              and f"incomplete: {real} of" in ps.get("status", ""))
        return ok, f"complete={ps['complete']} n_present={ps.get('n_present')} status={ps.get('status')!r}; " \
                   f"the shards hold {real} prompts"
    verdict.probe("vindex.info", lambda: vindex.info(root / name), compare=says)
    verdict.done()


def test_cli_info_and_the_prompt_sets_view(verdict, lake):
    from vindex.cli import main
    root, cuts = lake
    verdict.injected(f"cut-b: {cuts['cut-b']}")
    real = {n: len(held(root / n)) for n in ("llama", "cut-a", "cut-b")}
    r = CliRunner().invoke(main, ["info", str(root / "cut-b")])
    if verdict.cli("vindex info", r):
        ok = f"incomplete: {real['cut-b']} of 8 prompts" in r.output
        verdict.note(fh.HANDLED if ok else fh.SILENT_WRONG, "vindex info: " + next(
            (line for line in r.output.splitlines() if line.startswith("prompts")), r.output[-200:]))
    verdict.probe("prompt_sets view", lambda: _sql(root, "SELECT model, n_present, complete FROM prompt_sets"),
                  compare=lambda t: (sorted(map(tuple, (r.values() for r in t.to_pylist()))) == sorted(
                      (n, real[n], n == "llama") for n in real), str(t.to_pylist())))
    verdict.done()


REFUSALS = {
    "SQL cka_matrix(full, cut-b)": lambda root: _sql(root, "SELECT * FROM cka_matrix('llama', 'cut-b')"),
    "SQL cka_matrix(cut-a, cut-b)": lambda root: _sql(root, "SELECT * FROM cka_matrix('cut-a', 'cut-b')"),
    "SQL cka_depth": lambda root: _sql(root, "SELECT * FROM cka_depth('llama', 'cut-b')"),
    "SQL mutual_knn_matrix": lambda root: _sql(root, "SELECT * FROM mutual_knn_matrix('llama', 'cut-b', k := 1)"),
    "SQL cka_token_matrix": lambda root: _sql(root, "SELECT * FROM cka_token_matrix('cut-b', 'llama')"),
    "Python cka_matrix": lambda root: cka_matrix(root, "llama", "cut-b"),
    "Python cka_depth": lambda root: cka_depth(root, "cut-a", "llama"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_analyses_refuse_an_incomplete_prompt_set(verdict, lake, case):
    root, cuts = lake
    verdict.injected(f"{case} over a killed build ({cuts['cut-b']})")
    verdict.must_fail(case, lambda: REFUSALS[case](root))
    verdict.done()


def test_cli_cka_refuses(verdict, lake):
    from vindex.cli import main
    root, cuts = lake
    verdict.injected("vindex cka llama cut-b")
    r = CliRunner().invoke(main, ["cka", "-l", str(root), "llama", "cut-b", "-f", "csv"])
    if r.exit_code == 0:
        verdict.note(fh.SILENT_WRONG, "vindex cka compared a killed build without --allow-partial")
    else:
        verdict.cli("vindex cka", r)
    verdict.done()


def _numpy_cka(root, common):
    from vindex import Vindex

    def layers(name):
        t = [r for r in Vindex.open(root / name).read("pooled").to_pylist() if r["pooling"] == "mean"]
        return {la: np.array([r["act"] for r in sorted((r for r in t if r["layer"] == la and r["prompt_id"] in common),
                                                      key=lambda r: r["prompt_id"])], np.float64)
                for la in sorted({r["layer"] for r in t})}

    def cka(X, Y):      # Kornblith et al. 2019, eq. 5
        Xc, Yc = X - X.mean(0), Y - Y.mean(0)
        return np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    A, B = layers("llama"), layers("cut-b")
    return {(la, lb): cka(A[la], B[lb]) for la in A for lb in B}


def test_allow_partial_compares_the_common_prompts_and_says_so(verdict, lake):
    from vindex.errors import PartialData
    root, cuts = lake
    common = held(root / "llama") & held(root / "cut-b")
    ref = _numpy_cka(root, common)
    verdict.injected(f"cka_matrix(llama, cut-b, allow_partial) over a killed build ({cuts['cut-b']}); "
                     f"{len(common)} common prompts")

    def right(t):
        rows = t.to_pylist()
        got = {(r["layer_a"], r["layer_b"]): r["cka"] for r in rows}
        ns = {r["n"] for r in rows}
        bad = [k for k in ref if got.get(k) is None or abs(got[k] - ref[k]) > TOL]
        return (ns == {len(common)} and not bad and set(got) == set(ref),
                f"n = {sorted(ns)} (common prompts: {len(common)}); "
                + ("every value within 1e-9 of numpy over the common prompts" if not bad else
                   f"layers {bad[:2]} give {[got.get(k) for k in bad[:2]]}, numpy {[ref[k] for k in bad[:2]]}"))
    verdict.probe("SQL allow_partial := true", lambda: _sql(
        root, "SELECT * FROM cka_matrix('llama', 'cut-b', pooling := 'mean', estimator := 'biased', allow_partial := true)"), compare=right)

    def warned():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            t = cka_matrix(root, "llama", "cut-b", pooling="mean", estimator="biased", allow_partial=True)
        said = [str(w.message) for w in seen if issubclass(w.category, PartialData)]
        return t, said

    def said_it(result):
        t, said = result
        ok, why = right(t)
        ok = ok and any(f"computed over {len(common)} prompts" in s for s in said)
        return ok, f"{why}; PartialData: {said[:1] or 'none'}"
    verdict.probe("Python allow_partial=True", warned, compare=said_it)
    verdict.done()
