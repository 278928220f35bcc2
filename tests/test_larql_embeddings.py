"""import_larql(..., embeddings=True): LarQL's embeddings.bin as the `embeddings` table, value for value,
streamed in bounded parts; and the `describe` macro's gate route (LarQL's DESCRIBE: features ranked by
|W_gate[f] . embed_scale W_E[t]|) against numpy on the weights of a tiny random Llama.

embeddings.bin is written here from the format's description (raw little-endian rows, no header), with
numpy's own byte order, never through the importer's reader.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from larql_fixtures import larql_fixture_from_model, make_vocab, sha256, write_larql_fixture

from vindex import ChecksumError, Vindex, verify
from vindex.cli import main
from vindex.errors import LarqlFormatError
from vindex.ingest.larql import embeddings as larql_embeddings
from vindex.ingest.larql import import_larql
from vindex.query import connect


def write_embeddings_bin(folder, W_E: np.ndarray, dtype: str) -> np.ndarray:
    """W_E's rows as LarQL stores them; returns the values the file holds (as float32)."""
    if dtype == "bf16":   # the top 16 bits of each float32
        data = (W_E.astype("<f4").view("<u4") >> 16).astype("<u2")
        (folder / "embeddings.bin").write_bytes(data.tobytes())
        return (data.astype(np.uint32) << 16).view(np.float32)
    data = W_E.astype({"f32": "<f4", "f16": "<f2"}[dtype])
    (folder / "embeddings.bin").write_bytes(data.tobytes())
    return data.astype(np.float32)


def exact_texts(vocab: int) -> list[str]:
    """What tokenizer.decode([id]) gives for make_vocab's tokens, from its rules (not from the tokenizer):
    'Ġ' is a leading space, 'Ã©' the two bytes of 'é', id 0 the special '<pad>' (kept)."""
    tokens, _ = make_vocab(vocab)
    return ["<pad>"] + [t.replace("Ġ", " ").replace("Ã©", "é") for t in tokens[1:]]


def edit_index(folder, **fields) -> None:
    index = json.loads((folder / "index.json").read_text())
    index.update(fields)
    (folder / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_embeddings_import_value_for_value_in_bounded_parts(tmp_path, monkeypatch, dtype):
    fx = write_larql_fixture(tmp_path / "src", dtype=dtype, vocab=40, hidden=8)
    W_E = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
    stored = write_embeddings_bin(fx.folder, W_E, dtype)
    # 8 x 4 bytes per row: parts of 6 rows, so 40 rows take 7 parts, none larger than the bound
    monkeypatch.setattr(larql_embeddings, "VECTOR_PART_BYTES", 6 * 8 * 4)
    root = import_larql(fx.folder, tmp_path / "lake" / "tiny", embeddings=True, progress=False)
    assert verify(root) == []
    vx = Vindex.open(root)
    files = vx.manifest["tables"]["embeddings"]["files"]
    assert [e["rows"] for e in files] == [6] * 6 + [4]
    rows = vx.read("embeddings").to_pylist()
    assert [r["token_id"] for r in rows] == list(range(40))
    assert [r["token"] for r in rows] == exact_texts(40)
    assert {r["model"] for r in rows} == {"tiny"}
    got = np.array([r["vector"] for r in rows], dtype=np.float32)
    np.testing.assert_array_equal(got, stored)
    t = vx.manifest["tables"]["embeddings"]
    assert (t["vector_width"], t["vector_dtype"]) == (8, "float16" if dtype == "f16" else "float32")
    ex = vx.manifest["extraction"]["embeddings"]
    assert (ex["file"], ex["dtype"], ex["rows"], ex["embed_scale"]) == ("embeddings.bin", dtype, 40, 1.0)
    # the SQL view: one row per id, FLOAT[8]
    con = connect(tmp_path / "lake")
    assert con.sql("SELECT count(*), typeof(any_value(vector)) FROM embeddings").fetchone() == (40, "FLOAT[8]")


def test_a_16_bit_file_under_an_f32_index_is_read_as_f16_as_larql_does(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", dtype="f32", vocab=40, hidden=8)
    W_E = np.random.default_rng(2).standard_normal((40, 8)).astype(np.float32)
    stored = write_embeddings_bin(fx.folder, W_E, "f16")
    vx = Vindex.open(import_larql(fx.folder, tmp_path / "out", embeddings=True, progress=False))
    got = np.array(vx.read("embeddings").column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(got, stored)
    assert vx.manifest["tables"]["embeddings"]["vector_dtype"] == "float16"


@pytest.fixture(scope="module")
def tiny_import(tmp_path_factory):
    """A LarQL vindex computed from a tiny random Llama's weights, with embeddings.bin and embed_scale 2.5,
    imported with gate vectors and embeddings."""
    tmp = tmp_path_factory.mktemp("larql-emb")
    fx = larql_fixture_from_model(tmp / "src")
    write_embeddings_bin(fx.folder, fx.weights["W_E"], "f32")
    edit_index(fx.folder, embed_scale=2.5)
    import_larql(fx.folder, tmp / "lake" / "tiny", gate_vectors=True, embeddings=True, progress=False)
    return fx, tmp / "lake"


def test_describe_gate_route_equals_numpy(tiny_import):
    fx, lake = tiny_import
    texts = exact_texts(len(fx.weights["W_E"]))
    con = connect(lake)
    for token_id in (9, 10, 3):            # ' w9', ' w10', 'w3' (no leading space)
        token = texts[token_id]
        got = con.sql("""SELECT * FROM "describe"('tiny', $t, k := 4) WHERE source = 'gate'""",
                      params={"t": token}).df()
        q = 2.5 * fx.weights["W_E"][token_id].astype(np.float64)            # embed_scale * W_E[t]
        for block in range(2):
            scores = fx.weights[block]["W_gate"].astype(np.float64) @ q      # (d_ffn,)
            order = sorted(range(len(scores)), key=lambda f: (-abs(scores[f]), f))[:4]
            mine = got[got["layer"] == block + 1].sort_values("rank")
            assert list(mine["feature"]) == order, (token, block)
            np.testing.assert_allclose(mine["score"], scores[order], rtol=1e-5, atol=1e-6)
            assert list(mine["n"]) == [1] * 4 and list(mine["rank"]) == [1, 2, 3, 4]
            assert list(mine["label"]) == [fx.token_text[int(fx.layers[block].top_token_id[f])] for f in order]
        assert set(got["layer"]) == {1, 2}


def test_describe_down_meta_route_matches_stripped_text(tiny_import):
    """down_meta's token text is stripped (LarQL's display), so ' w9' finds the features writing it."""
    fx, lake = tiny_import
    con = connect(lake)
    got = con.sql("""SELECT * FROM "describe"('tiny', ' w9', k := 50) WHERE source = 'down_meta'""").df()
    want = {(block + 1, f) for block, src in fx.layers.items() for f in range(src.num_features)
            if 9 in src.token_ids[f, :src.n_valid[f]].tolist()}
    assert want and set(zip(got["layer"], got["feature"])) == want
    for r in got.itertuples():
        src = fx.layers[r.layer - 1]
        j = src.token_ids[r.feature].tolist().index(9)
        assert np.float32(r.score) == src.logits[r.feature, j]


def test_no_gate_rows_without_embeddings_or_gate_vectors(tmp_path):
    fx = larql_fixture_from_model(tmp_path / "src")
    write_embeddings_bin(fx.folder, fx.weights["W_E"], "f32")
    import_larql(fx.folder, tmp_path / "lake" / "gates-only", gate_vectors=True, progress=False)
    import_larql(fx.folder, tmp_path / "lake" / "emb-only", embeddings=True, progress=False)
    con = connect(tmp_path / "lake")
    rows = con.sql("SELECT model, source, count(*) FROM describe_all(' w9') GROUP BY ALL ORDER BY ALL").fetchall()
    assert {s for _, s, _ in rows} == {"down_meta"}
    assert {m for m, _, _ in rows} == {"gates-only", "emb-only"}


def test_reimport_without_embeddings_drops_the_table(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", vocab=40, hidden=8)
    write_embeddings_bin(fx.folder, np.ones((40, 8), np.float32), "f32")
    root = import_larql(fx.folder, tmp_path / "out", embeddings=True, progress=False)
    shard = root / Vindex.open(root).manifest["tables"]["embeddings"]["files"][0]["path"]
    assert shard.is_file()
    import_larql(fx.folder, tmp_path / "out", progress=False)
    vx = Vindex.open(root)
    assert "embeddings" not in vx.tables and vx.manifest["extraction"]["embeddings"] is None
    assert not shard.exists() and verify(root) == []


def test_bad_embeddings_files_are_named_errors_before_anything_is_written(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", vocab=40, hidden=8)
    with pytest.raises(LarqlFormatError, match=r"embeddings\.bin: not found \(embeddings were asked for\)"):
        import_larql(fx.folder, tmp_path / "a", embeddings=True, progress=False)
    (fx.folder / "embeddings.bin").write_bytes(np.zeros((39, 8), "<f4").tobytes())   # one row short
    with pytest.raises(LarqlFormatError, match=r"embeddings\.bin: 1248 bytes is neither vocab_size 40 x "
                                               r"hidden_size 8 x 4 \(f32\) = 1280 nor x 2 \(f16\) = 640"):
        import_larql(fx.folder, tmp_path / "b", embeddings=True, progress=False)
    write_embeddings_bin(fx.folder, np.ones((40, 8), np.float32), "f32")
    index = json.loads((fx.folder / "index.json").read_text())
    edit_index(fx.folder, checksums={**index["checksums"], "embeddings.bin": sha256(fx.folder / "down_meta.bin")})
    with pytest.raises(ChecksumError, match=r"embeddings\.bin: sha256 .* checksums\['embeddings.bin'\]"):
        import_larql(fx.folder, tmp_path / "c", embeddings=True, progress=False)
    edit_index(fx.folder, checksums=index["checksums"], vocab_size=None)
    with pytest.raises(LarqlFormatError, match=r"index\.json: field 'vocab_size' must be an integer >= 1"):
        import_larql(fx.folder, tmp_path / "d", embeddings=True, progress=False)
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_cli_mirror(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", vocab=40, hidden=8)
    write_embeddings_bin(fx.folder, np.ones((40, 8), np.float32), "f32")
    res = CliRunner().invoke(main, ["import-larql", str(fx.folder), "--out", str(tmp_path / "out"),
                                    "--embeddings", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "embeddings 40 rows" in res.output
    assert Vindex.open(tmp_path / "out").read("embeddings").num_rows == 40


def test_from_the_hub_embeddings_bin_is_downloaded_only_when_asked_for(hub_server, tmp_path):
    from vindex import NotFound
    fx = write_larql_fixture(tmp_path / "src", vocab=40, hidden=8)
    hub_server.put_folder("org/no-embeddings", fx.folder, repo_type="model")
    stored = write_embeddings_bin(fx.folder, np.random.default_rng(3).standard_normal((40, 8)), "f32")
    hub_server.put_folder("org/tiny", fx.folder, repo_type="model")

    def downloaded():
        return {r["path"].rsplit("/", 1)[-1] for r in hub_server.log if "/resolve/" in r["path"]}
    import_larql("hf://org/tiny", tmp_path / "plain", progress=False)
    assert "embeddings.bin" not in downloaded()
    hub_server.clear_log()
    root = import_larql("hf://org/tiny", tmp_path / "emb", embeddings=True, progress=False)
    assert downloaded() == {"embeddings.bin"}          # the rest is in the local Hub cache
    got = np.array(Vindex.open(root).read("embeddings").column("vector").to_pylist(), np.float32)
    np.testing.assert_array_equal(got, stored)
    assert "embeddings.bin" in Vindex.open(root).manifest["extraction"]["imported_from"]["files"]
    with pytest.raises(NotFound, match=r"hf://org/no-embeddings: embeddings were asked for, but the repo has no "
                                       r"embeddings\.bin"):
        import_larql("hf://org/no-embeddings", tmp_path / "none", embeddings=True, progress=False)


def test_gate_route_averages_the_ids_that_share_the_text(tmp_path):
    """Two ids whose text is ' w9' (id 9, and an added token at id 47): q is the mean of their rows, as LarQL
    averages the rows of a multi-token entity; n = 2."""
    fx = larql_fixture_from_model(tmp_path / "src")
    tj = json.loads((fx.folder / "tokenizer.json").read_text())
    del tj["model"]["vocab"]["Ġw47"]
    tj["added_tokens"].append({"id": 47, "content": " w9", "single_word": False, "lstrip": False, "rstrip": False,
                               "normalized": False, "special": False})
    (fx.folder / "tokenizer.json").write_text(json.dumps(tj))
    index = json.loads((fx.folder / "index.json").read_text())
    edit_index(fx.folder, checksums={**index["checksums"], "tokenizer.json": sha256(fx.folder / "tokenizer.json")})
    write_embeddings_bin(fx.folder, fx.weights["W_E"], "f32")
    import_larql(fx.folder, tmp_path / "lake" / "tiny", gate_vectors=True, embeddings=True, progress=False)
    con = connect(tmp_path / "lake")
    assert con.sql("SELECT token_id FROM embeddings WHERE token = ' w9' ORDER BY 1").fetchall() == [(9,), (47,)]
    got = con.sql("""SELECT * FROM "describe"('tiny', ' w9', k := 3) WHERE source = 'gate'""").df()
    q = fx.weights["W_E"][[9, 47]].astype(np.float64).mean(axis=0)          # embed_scale 1.0 in this index
    for block in range(2):
        scores = fx.weights[block]["W_gate"].astype(np.float64) @ q
        order = sorted(range(len(scores)), key=lambda f: (-abs(scores[f]), f))[:3]
        mine = got[got["layer"] == block + 1].sort_values("rank")
        assert list(mine["feature"]) == order and list(mine["n"]) == [2, 2, 2]
        np.testing.assert_allclose(mine["score"], scores[order], rtol=1e-5, atol=1e-6)
