"""describe / describe_all / walk (query/describe.py) against the same answer computed with pandas from
the Parquet shards (pyarrow, not the views), on a tiny lake built with mlp_post and the weight tables."""
from __future__ import annotations

import pandas as pd
import pyarrow.dataset as ds
import pytest

from ingest_fixtures import make_tiny_model, write_prompts
from vindex.ingest import build, build_weights
from vindex.query import connect

K = 3


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("describe")
    prompts = write_prompts(tmp / "p.jsonl")
    for family in ("llama", "qwen2"):
        folder = make_tiny_model(tmp / family, family)
        root = build(folder, tmp / "lake" / family, prompts=prompts, sites="resid_post,mlp_post", feature_top_k=8,
                     progress=False)
        build_weights(folder, root, top_k=30, progress=False)
    return tmp / "lake"


def table(root, name) -> pd.DataFrame:
    return ds.dataset(root / "data" / name, format="parquet").to_table().to_pandas()


def test_describe_matches_pandas(lake):
    con = connect(lake)
    root = lake / "llama"
    acts, feats = table(root, "feature_acts"), table(root, "features")
    written = {t["token"] for tops in feats["top_tokens"] for t in tops}
    token = acts[acts["token"].isin(written)]["token"].value_counts().index[0]
    got = con.sql(f"""SELECT * FROM "describe"('llama', $t, k := {K})""", params={"t": token}).df()
    assert set(got["source"]) == {"down_meta", "feature_acts"}
    fires = (acts[acts["token"] == token].groupby(["layer", "feature"])["activation"]
             .agg(["count", "mean"]).reset_index())
    for layer, g in fires.groupby("layer"):
        g = g.assign(a=g["mean"].abs()).sort_values(["count", "a", "feature"], ascending=[False, False, True]).head(K)
        mine = got[(got["layer"] == layer) & (got["source"] == "feature_acts")].sort_values("rank")
        assert list(mine["feature"]) == list(g["feature"]) and list(mine["n"]) == list(g["count"])
        assert mine["score"].to_numpy() == pytest.approx(g["mean"].to_numpy(), rel=1e-5)
        assert set(mine["band"]) == {"early" if layer / 3 < 1 / 3 else "middle" if layer / 3 < 2 / 3 else "late"}
    rows = [(r.layer, r.feature, t["logit"]) for r in feats.itertuples() for t in r.top_tokens if t["token"] == token]
    writes = pd.DataFrame(rows, columns=["layer", "feature", "logit"])
    for layer, g in writes.groupby("layer"):
        g = g.sort_values(["logit", "feature"], ascending=[False, True]).head(K)
        mine = got[(got["layer"] == layer) & (got["source"] == "down_meta")].sort_values("rank")
        assert list(mine["feature"]) == list(g["feature"])
        labels = feats.set_index(["layer", "feature"]).loc[[(layer, f) for f in g["feature"]], "top_token"]
        assert list(mine["label"]) == list(labels)
    # describe_all: every model of the lake, each exactly its own describe
    every = con.sql(f"SELECT * FROM describe_all($t, k := {K})", params={"t": token}).df()
    assert set(every["model"]) <= {"llama", "qwen2"} and "llama" in set(every["model"])
    pd.testing.assert_frame_equal(every[every["model"] == "llama"].reset_index(drop=True), got)


def test_walk_is_the_last_tokens_top_features(lake):
    con = connect(lake)
    acts, feats = table(lake / "qwen2", "feature_acts"), table(lake / "qwen2", "features")
    p = acts[acts["prompt_id"] == 5]
    last = p[p["token_index"] == p["token_index"].max()]
    got = con.sql(f"SELECT * FROM walk('qwen2', 5, k := {K})").df()
    want = last[last["rank"] <= K].sort_values(["layer", "rank"])
    assert list(zip(got["layer"], got["feature"])) == list(zip(want["layer"], want["feature"]))
    labels = feats.set_index(["layer", "feature"])["top_token"]
    assert list(got["label"]) == [labels[(l, f)] for l, f in zip(want["layer"], want["feature"])]
    first = con.sql("SELECT DISTINCT token_index FROM walk('qwen2', 5, token_at := 0)").fetchall()
    assert first == [(0,)]
