"""Steering (vindex.ingest.steering) against hand-written hooks on tiny random models, with its null."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from click.testing import CliRunner

from ingest_fixtures import make_tiny_model, write_prompts
from vindex import verify
from vindex.cli import main
from vindex.errors import InvalidValue
from vindex.ingest.intervention_runs import last_logits, load_lm
from vindex.ingest.steering import null_directions, steer, steered_logits

PROMPTS = [{"text": "the cat sleeps.", "category": "x"}, {"text": "If a train travels 60 km"},
           {"text": "Le chat dort?"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("steer")
    folder = make_tiny_model(base / "gemma3", "gemma3", n_layers=3)
    prompts = write_prompts(base / "prompts.jsonl", PROMPTS)
    return folder, load_lm(folder, device="cpu", progress=False), prompts


def rows(root):
    return ds.dataset(root / "data/steering", format="parquet", partitioning="hive").to_table().to_pandas()


def test_alpha_zero_is_the_identity(tiny):
    _, lm, _ = tiny
    ids = torch.as_tensor(lm.tokenizer(PROMPTS[0]["text"])["input_ids"])[None]
    d = np.random.default_rng(1).standard_normal(32)
    for layer in (0, 2, 3):
        torch.testing.assert_close(steered_logits(lm.model, lm.family, ids, layer, d, [0.0]),
                                   last_logits(lm.model, ids), rtol=0, atol=0)


def test_equals_hand_written_hooks_with_its_null(tiny, tmp_path):
    folder, lm, prompts = tiny
    d = np.random.default_rng(2).standard_normal(32) * 3
    alphas = [0.0, 0.5, 2.0]
    root = steer(folder, d, 2, tmp_path / "v", alphas=alphas, prompts=prompts, targets="a,b", controls="c",
                 null=3, seed=7, batch_size=4, progress=False, device="cpu")
    t = rows(root)
    assert len(t) == (1 + 3) * len(PROMPTS) * len(alphas) * 3
    np.testing.assert_allclose(t[t.alpha == 0].logit_change, 0, atol=1e-6)   # batches of other sizes: BLAS rounding
    assert sorted(set(t.direction_id)) == ["direction", "null-0", "null-1", "null-2"]
    assert (t.is_null == t.direction_id.str.startswith("null")).all()
    np.testing.assert_allclose(t.direction_norm, np.linalg.norm(d), rtol=1e-6)
    nulls = null_directions(np.linalg.norm(d), 32, 3, 7)
    np.testing.assert_allclose(np.linalg.norm(nulls, axis=1), np.linalg.norm(d), rtol=1e-12)
    tok = lm.tokenizer
    block = lm.model.model.layers[1]                        # vindex layer 2 = block 1's output
    for did, vec in [("direction", d), *((f"null-{k}", v) for k, v in enumerate(nulls))]:
        for i, p in enumerate(PROMPTS):
            x = torch.as_tensor(tok(p["text"])["input_ids"])[None]
            for a in alphas:
                def add(mod, args, out, a=a, vec=vec):
                    h = out[0] if isinstance(out, tuple) else out
                    h = h + a * torch.as_tensor(vec, dtype=h.dtype)
                    return (h, *out[1:]) if isinstance(out, tuple) else h
                handle = block.register_forward_hook(add)
                with torch.inference_mode():
                    logits = lm.model(input_ids=x).logits[0, -1]
                handle.remove()
                got = t[(t.direction_id == did) & (t.prompt_id == i) & (t.alpha == a)].sort_values("token_id")
                for r in got.itertuples():
                    assert r.logit == pytest.approx(float(logits[r.token_id]), abs=1e-5)
                    assert r.prob == pytest.approx(float(torch.softmax(logits, -1)[r.token_id]), abs=1e-6)
    assert set(t.role) == {"target", "control"}
    assert verify(root) == []
    m = json.loads((root / "vindex.json").read_text())
    record = next(v for k, v in m["extraction"].items() if k.startswith("steering."))
    assert record["complete"] and "3 Gaussian directions" in record["null"] and "default_rng(7)" in record["null"]


def test_bad_input(tiny, tmp_path):
    folder, _, prompts = tiny
    d = np.ones(32)
    with pytest.raises(InvalidValue, match="sweep is empty"):
        steer(folder, d, 1, tmp_path / "v", alphas="", prompts=prompts, targets="a", progress=False)
    with pytest.raises(InvalidValue, match=r"width 31 does not match .*d_model 32"):
        steer(folder, np.ones(31), 1, tmp_path / "v", prompts=prompts, targets="a", progress=False)
    with pytest.raises(InvalidValue, match="layer 9: this model has layers 0-3"):
        steer(folder, d, 9, tmp_path / "v", prompts=prompts, targets="a", progress=False)
    with pytest.raises(InvalidValue, match="not single tokens .*' antidisestablishment'"):
        steer(folder, d, 1, tmp_path / "v", prompts=prompts, targets=" antidisestablishment", progress=False)
    np.save(tmp_path / "d.npy", np.ones((2, 32)))
    with pytest.raises(InvalidValue, match="does not match"):
        steer(folder, tmp_path / "d.npy", 1, tmp_path / "v", prompts=prompts, targets="a", progress=False)


def test_cli_direction_from_sql_and_file(tiny, tmp_path):
    """--direction as SQL over the lake (a difference of two pooled vectors) or as a .npy file."""
    from vindex.ingest import build
    from vindex.query import connect
    folder, _, prompts = tiny
    lake = tmp_path / "lake"
    build(folder, lake / "gemma3", prompts=prompts, progress=False)
    query = ("SELECT list_transform(range(1, 33), i -> a.act[i] - b.act[i]) FROM pooled a, pooled b WHERE "
             "a.prompt_id = 0 AND b.prompt_id = 1 AND a.layer = 2 AND b.layer = 2 AND a.pooling = 'mean' "
             "AND b.pooling = 'mean'")
    runner = CliRunner()
    res = runner.invoke(main, ["steer", str(folder), "-l", str(lake), "--out", str(lake / "gemma3"), "--layer", "2",
                               "--prompts", str(prompts), "--targets", "a", "--null", "2", "--alphas", "1",
                               "--run-id", "sql", "--quiet", "--direction", query])
    assert res.exit_code == 0, res.output
    want = np.asarray(connect(lake).sql(query).fetchone()[0])
    np.save(tmp_path / "d.npy", want)
    res = runner.invoke(main, ["steer", str(folder), "--out", str(lake / "gemma3"), "--layer", "2", "--prompts",
                               str(prompts), "--targets", "a", "--null", "2", "--alphas", "1", "--run-id", "file",
                               "--quiet", "--direction", str(tmp_path / "d.npy")])
    assert res.exit_code == 0, res.output
    t = connect(lake).sql("SELECT run_id, direction_id, prompt_id, logit FROM steering ORDER BY ALL").df()
    a, b = t[t.run_id == "file"].drop(columns="run_id"), t[t.run_id == "sql"].drop(columns="run_id")
    np.testing.assert_allclose(a.logit.to_numpy(), b.logit.to_numpy(), rtol=0, atol=1e-6)
    res = runner.invoke(main, ["steer", str(folder), "--out", str(lake / "gemma3"), "--layer", "2", "--prompts",
                               str(prompts), "--alphas", "", "--quiet", "--direction", str(tmp_path / "d.npy")])
    assert res.exit_code == 1 and "sweep is empty" in res.output
