"""Transplant (vindex.ingest.transplant): a category direction of tiny random model A (d 32), carried into
tiny model B (d 48) by the stored ridge map, steers B; checked against directions computed in SQL over the
lake, logits from hand-written block hooks, and the summary recomputed from the steering rows."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ingest_fixtures import make_tiny_model, tiny_config, tiny_tokenizer, write_prompts
from vindex import verify
from vindex.cli import main
from vindex.errors import InvalidValue, NotFound
from vindex.ingest import build
from vindex.ingest.intervention_runs import load_lm
from vindex.ingest.transplant import transplant, unmapped_direction
from vindex.maps import read_map
from vindex.query import connect, rosetta

FRENCH = ["Le chat dort sur le canapé.", "La ville est belle ce matin.", "Je voudrais un café, s'il vous plaît.",
          "Nous allons au marché demain.", "Il fait beau aujourd'hui.", "Où est la gare?",
          "Elle lit un livre dans le jardin.", "Les enfants jouent dehors."]
GERMAN = ["Die Katze schläft auf dem Sofa.", "Die Stadt ist heute schön.", "Ich möchte einen Kaffee, bitte.",
          "Wir gehen morgen auf den Markt.", "Das Wetter ist heute gut.", "Wo ist der Bahnhof?",
          "Sie liest ein Buch im Garten.", "Die Kinder spielen draußen."]
STEER = [{"text": "the cat sleeps."}, {"text": "What is the capital city of Australia?"}, {"text": "Hi"}]
ALPHAS = [0.0, 1.0, 3.0]


def make_wide_model(folder, family="qwen2", d=48, n_layers=4, seed=1):
    """A tiny random decoder like ingest_fixtures' but of width d."""
    from transformers import AutoModelForCausalLM
    from ingest_fixtures import FAMILIES
    model_type, add_bos, _ = FAMILIES[family]
    tok = tiny_tokenizer(False, add_bos)
    cfg = tiny_config(model_type, len(tok), n_layers)
    cfg.hidden_size = d
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    base = tmp_path_factory.mktemp("transplant")
    a = make_tiny_model(base / "llama", "llama", n_layers=3)
    b = make_wide_model(base / "qwen2")
    corpus = write_prompts(base / "corpus.jsonl", [{"category": "french", "text": t} for t in FRENCH]
                           + [{"category": "german", "text": t} for t in GERMAN])
    lake = base / "lake"
    build(a, lake / "tiny-a", name="tiny-a", prompts=corpus, progress=False)
    build(b, lake / "tiny-b", name="tiny-b", prompts=corpus, progress=False)
    rosetta(lake, "tiny-a", "tiny-b", folds=4, store=True)
    steer_prompts = write_prompts(base / "steer.jsonl", STEER)
    return {"lake": lake, "a": a, "b": b, "prompts": steer_prompts}


@pytest.fixture(scope="module")
def result(lake):
    return transplant("tiny-a", "tiny-b", 2, "french", "german", lake["lake"], source=lake["b"], alphas=ALPHAS,
                      prompts=lake["prompts"], targets="a,b", controls="c", null=5, seed=3, batch_size=4,
                      progress=False, device="cpu")


def sql_direction(con, model, layer, pooling):
    """French minus German pooled means, in SQL over the lake."""
    rows = con.execute("""
        SELECT p.category, list(r.act) FROM pooled r JOIN prompts p USING (model, prompt_set, prompt_id)
        WHERE r.model = ? AND r.layer = ? AND r.pooling = ? GROUP BY p.category""", [model, layer, pooling]).fetchall()
    means = {c: np.asarray(acts, dtype=np.float64).mean(axis=0) for c, acts in rows}
    return means["french"] - means["german"]


def hooked_logits(lm, layer, vec, alpha, text):
    """Last-position logits with alpha * vec added to block (layer - 1)'s output, by a hand-written hook."""
    block = lm.model.model.layers[layer - 1]

    def add(mod, args, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h + alpha * torch.as_tensor(vec, dtype=h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h
    handle = block.register_forward_hook(add)
    try:
        with torch.inference_mode():
            return lm.model(input_ids=torch.as_tensor(lm.tokenizer(text)["input_ids"])[None]).logits[0, -1]
    finally:
        handle.remove()


def test_each_arm_steers_with_its_direction(lake, result):
    con = connect(lake["lake"])
    m = read_map(lake["lake"] / "tiny-b", "tiny-a", 2, "ridge")
    layer_b, pooling = m.info["layer_b"], m.info["pooling"]
    v_a, v_b = sql_direction(con, "tiny-a", 2, pooling), sql_direction(con, "tiny-b", layer_b, pooling)
    norm = np.linalg.norm(v_b)
    want = {"mapped": v_a @ m.W, "native": v_b, "unmapped": np.concatenate([v_a, np.zeros(16)])}
    t = result.to_pylist()
    assert {r["arm"] for r in t} == {"mapped", "native", "unmapped"} and len(t) == 3 * len(ALPHAS)
    for r in t:
        d = want[r["arm"]]
        assert r["layer_b"] == layer_b and r["norm"] == pytest.approx(norm, rel=1e-5)
        assert r["raw_norm"] == pytest.approx(np.linalg.norm(d), rel=1e-5)
        assert r["cos_native"] == pytest.approx(d @ v_b / (np.linalg.norm(d) * norm), abs=1e-5)
        assert (r["n_prompts"], r["n_null"], r["n_positive"], r["n_negative"]) == (3, 5, 8, 8)
    # the logits each arm's run stored are those of a hand-written hook adding the rescaled direction
    lm = load_lm(lake["b"], device="cpu", progress=False)
    stored = con.execute("SELECT run_id, prompt_id, alpha, token_id, logit FROM steering WHERE NOT is_null "
                         "AND alpha = 3 AND prompt_id = 1").fetchall()
    runs = {r["arm"]: r["run_id"] for r in t}
    for arm, d in want.items():
        logits = hooked_logits(lm, layer_b, d * (norm / np.linalg.norm(d)), 3.0, STEER[1]["text"])
        got = [(tid, lg) for rid, _, _, tid, lg in stored if rid == runs[arm]]
        assert len(got) == 3
        for tid, lg in got:
            assert lg == pytest.approx(float(logits[tid]), abs=1e-4), arm


def test_summary_is_the_steering_rows_against_the_null(lake, result):
    con = connect(lake["lake"])
    per_prompt = """
        SELECT run_id, direction_id, is_null, alpha, prompt_id,
               avg(logit_change) FILTER (WHERE role = 'target') - avg(logit_change) FILTER (WHERE role = 'control') AS e
        FROM steering GROUP BY ALL"""
    effects = con.execute(f"SELECT run_id, direction_id, is_null, alpha, avg(e) FROM ({per_prompt}) GROUP BY ALL"
                          ).fetchall()
    for r in result.to_pylist():
        mine = [e for rid, _, is_null, a, e in effects if rid == r["run_id"] and not is_null and a == r["alpha"]]
        null = np.array([e for rid, _, is_null, a, e in effects if is_null and a == r["alpha"]
                         and rid.endswith("-mapped")])
        assert len(mine) == 1 and len(null) == 5
        assert r["effect"] == pytest.approx(mine[0], abs=1e-6)
        assert r["effect"] == pytest.approx(r["target_change"] - r["control_change"], abs=1e-9)
        assert r["null_mean"] == pytest.approx(null.mean(), abs=1e-6)
        assert r["p_value"] == pytest.approx((1 + (null >= r["effect"] - 1e-9).sum()) / 6)
        if r["alpha"] == 0:
            assert abs(r["effect"]) < 1e-5
    assert verify(lake["lake"] / "tiny-b") == []
    record = json.loads((lake["lake"] / "tiny-b" / "vindex.json").read_text())["extraction"]
    assert sum(k.startswith("steering.transplant-") for k in record) == 3


def test_rerun_resumes_to_the_same_table(lake, result):
    again = transplant("tiny-a", "tiny-b", 2, "french", "german", lake["lake"], source=lake["b"], alphas=ALPHAS,
                       prompts=lake["prompts"], targets="a,b", controls="c", null=5, seed=3, batch_size=4,
                       progress=False, device="cpu")
    assert again.equals(result)


def test_unmapped_pads_or_truncates():
    assert unmapped_direction(np.array([1.0, 2.0]), 3).tolist() == [1.0, 2.0, 0.0]
    assert unmapped_direction(np.array([1.0, 2.0, 3.0]), 2).tolist() == [1.0, 2.0]


def test_bad_input(lake):
    args = dict(source=lake["b"], prompts=lake["prompts"], targets="a", progress=False, device="cpu")
    with pytest.raises(NotFound, match="no procrustes map from 'tiny-a' layer 2"):
        transplant("tiny-a", "tiny-b", 2, "french", "german", lake["lake"], method="procrustes", **args)
    with pytest.raises(InvalidValue, match="no pooled rows of category 'spanish' .*its categories: french, german"):
        transplant("tiny-a", "tiny-b", 2, "spanish", "german", lake["lake"], **args)
    with pytest.raises(NotFound, match="no vindex 'nope' .*the lake holds: tiny-a, tiny-b"):
        transplant("nope", "tiny-b", 2, "french", "german", lake["lake"], **args)
    with pytest.raises(InvalidValue, match="positive and negative are both 'french'"):
        transplant("tiny-a", "tiny-b", 2, "french", "french", lake["lake"], **args)


def test_cli_prints_the_library_table(lake, result):
    res = CliRunner().invoke(main, [
        "transplant", "tiny-a", "tiny-b", "2", "--positive", "french", "--negative", "german", "-l",
        str(lake["lake"]), "--source", str(lake["b"]), "--alphas", "0,1,3", "--prompts", str(lake["prompts"]),
        "--targets", "a,b", "--controls", "c", "--null", "5", "--seed", "3", "--batch-size", "4", "--quiet",
        "--device", "cpu", "-f", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [(r["arm"], r["alpha"]) for r in rows] == [(r["arm"], r["alpha"]) for r in result.to_pylist()]
    assert [r["effect"] for r in rows] == pytest.approx(result.column("effect").to_pylist(), abs=1e-12)
    res = CliRunner().invoke(main, ["transplant", "tiny-a", "tiny-b", "2", "--positive", "french", "--negative",
                                    "german", "-l", str(lake["lake"]), "--source", str(lake["b"]), "--method", "cca"])
    assert res.exit_code == 1 and "no cca map from 'tiny-a' layer 2" in res.output
