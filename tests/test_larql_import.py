"""import_larql: LarQL fixtures written from the documented format come back value for value."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from larql_fixtures import (assert_matches_fixture, larql_fixture_from_model, sha256, write_down_meta_bin,
                            write_larql_fixture)

import vindex
from vindex import ChecksumError, ManifestError, NotFound, Vindex
from vindex.ingest.larql import import_larql
from vindex.layers import BLOCK_TO_LAYER as LAYER_OFFSET
from vindex.ingest.larql.format import LarqlFormatError

CASES = {
    "dense-f32": dict(dtype="f32"),
    "dense-f16-labels-ov": dict(dtype="f16", labels=True, ov_gate=True),
    "moe-f32-labels-ov": dict(dtype="f32", moe=True, labels=True, ov_gate=True),
    "moe-f16": dict(dtype="f16", moe=True),
    "dense-bf16": dict(dtype="bf16", labels=True),
    "legacy-jsonl": dict(dtype="f32", legacy_jsonl=True, labels=True),
    "layer-without-meta": dict(dtype="f16", missing_meta_layer=1),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("gate_vectors", [True, False], ids=["vectors", "no-vectors"])
def test_fixture_imports_value_for_value(tmp_path, case, gate_vectors):
    fx = write_larql_fixture(tmp_path / "src", seed=len(case), **CASES[case])
    root = import_larql(fx.folder, tmp_path / "out", gate_vectors=gate_vectors, progress=False)
    assert_matches_fixture(root, fx, gate_vectors)


def test_manifest_from_index_json(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", moe=True, labels=True, ov_gate=True, n_layers=6)
    vx = Vindex.open(import_larql(fx.folder, tmp_path / "lake" / "tiny", progress=False))
    m, ex = vx.model, vx.manifest["extraction"]
    assert vx.name == "tiny"
    assert (m["id"], m["n_layers"], m["d_model"], m["d_ffn"], m["vocab_size"]) == ("test-org/tiny-larql", 6, 8, 12, 40)
    assert (m["n_heads"], m["n_kv_heads"], m["head_dim"], m["family"], m["source"]) == (4, 2, 2, "llama", "larql")
    assert m["moe"] == {"num_experts": 3, "top_k": 2}
    # LarQL bands count blocks from 0; the vindex's layers count block outputs from 1
    bands = fx.index["layer_bands"]
    assert m["layer_bands"] == {k: [a + LAYER_OFFSET, b + LAYER_OFFSET] for k, (a, b) in bands.items()}
    assert ex["source"] == "larql" and ex["layer_offset"] == LAYER_OFFSET
    assert ex["unembedding"]["kind"] == "embedding" and "W_E" in ex["unembedding"]["note"]
    assert ex["top_k"] == fx.top_k and ex["down_meta"]["file"] == "down_meta.bin"
    assert ex["larql"]["larql_version"] == "0.4.2" and ex["larql"]["extracted_at"] == "2026-01-02T03:04:05Z"
    assert ex["larql"]["extract_level"] == "browse" and ex["larql"]["layer_bands"] == bands
    assert ex["larql"]["checksums_verified"] == ["down_meta.bin"]   # gate vectors were not read
    assert ex["imported_from"]["uri"] == str(fx.folder.resolve())
    assert ex["clusters"] == fx.relation and ex["labels"]["files"] == ["feature_labels.json",
                                                                      "feature_clusters.jsonl",
                                                                      "relation_clusters.json"]
    assert ex["ov_gate"]["files"] == ["ov_gate_coupling.ndjson"] and ex["ov_gate"]["variant"] == "o"
    assert vx.layers("features") == [1, 2, 3, 4, 5, 6]


def test_real_model_weights(tmp_path):
    """A fixture computed from a tiny random Llama: imported values equal torch's own numbers."""
    import torch
    fx = larql_fixture_from_model(tmp_path / "src")
    root = import_larql(fx.folder, tmp_path / "out", gate_vectors=True, progress=False)
    assert_matches_fixture(root, fx, gate_vectors=True)
    vx = Vindex.open(root)
    assert vx.manifest["extraction"]["larql"]["checksums_verified"] == ["down_meta.bin", "tokenizer.json",
                                                                         "gate_vectors.bin"]
    feats = vx.read("features").to_pylist()
    ov = vx.read("ov_gate").to_pylist()
    W_E = torch.from_numpy(fx.weights["W_E"])
    for i in range(2):
        w = {k: torch.from_numpy(v) for k, v in fx.weights[i].items()}
        logits = W_E @ w["W_down"]                                  # (vocab, d_ffn), independent of numpy
        rows = sorted((r for r in feats if r["layer"] == i + 1), key=lambda r: r["feature"])
        assert [r["top_token_id"] for r in rows] == logits.argmax(0).tolist()
        np.testing.assert_allclose([r["c_score"] for r in rows], logits.max(0).values.numpy(), rtol=1e-5)
        np.testing.assert_array_equal(np.array([r["vector"] for r in rows], np.float32), w["W_gate"].numpy())
        for r in (r for r in ov if r["layer"] == i + 1):
            h = r["head"]
            c = torch.linalg.norm(w["W_gate"][r["feature"]] @ w["W_O"][:, 4 * h:4 * h + 4])
            assert abs(r["coupling"] - float(c)) <= 5e-4 + 1e-6
            if r["rank"] == 1:
                top = torch.linalg.norm(w["W_gate"] @ w["W_O"][:, 4 * h:4 * h + 4], dim=1).argmax()
                assert r["feature"] == int(top)


# -- bad sources fail clearly, before anything is written ---------------------------------------

def _no_vindex_written(out):
    assert not (out / "vindex.json").exists()


def test_truncated_down_meta_is_rejected(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", checksums=False)
    path = fx.folder / "down_meta.bin"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(LarqlFormatError, match=r"down_meta\.bin: layer 2 declares 12 records .* truncated"):
        import_larql(fx.folder, tmp_path / "out", progress=False)
    _no_vindex_written(tmp_path / "out")
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(LarqlFormatError, match=r"down_meta\.bin: 10 bytes is shorter than the 16-byte header"):
        import_larql(fx.folder, tmp_path / "out", progress=False)


def test_record_size_mismatch_is_rejected(tmp_path):
    """The u8 count per record of LarQL's written spec: the header's record size no longer fits."""
    fx = write_larql_fixture(tmp_path / "src", checksums=False, n_layers=1, n_features=4)
    write_down_meta_bin(fx.folder / "down_meta.bin", list(fx.layers.values()), fx.top_k)
    raw = bytearray((fx.folder / "down_meta.bin").read_bytes())
    rec = 8 + 8 * fx.top_k
    body = b"".join(bytes([fx.top_k]) + raw[20 + i * rec:20 + (i + 1) * rec] for i in range(4))
    (fx.folder / "down_meta.bin").write_bytes(bytes(raw[:20]) + body)
    with pytest.raises(LarqlFormatError, match=r"4 bytes follow the last of 1 layers: the record size"):
        import_larql(fx.folder, tmp_path / "out", progress=False)


def test_bad_checksum_is_rejected(tmp_path):
    fx = write_larql_fixture(tmp_path / "src")
    path = fx.folder / "down_meta.bin"
    raw = bytearray(path.read_bytes())
    raw[30] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match=r"down_meta\.bin: sha256 .* does not match index\.json's "
                                            r"checksums\['down_meta\.bin'\]"):
        import_larql(fx.folder, tmp_path / "out", progress=False)
    _no_vindex_written(tmp_path / "out")
    # gate_vectors.bin is hashed only when it is read
    path.write_bytes(bytes(raw[:30]) + bytes([raw[30] ^ 0xFF]) + bytes(raw[31:]))
    gv = fx.folder / "gate_vectors.bin"
    gv.write_bytes(gv.read_bytes()[:-1] + b"\x7f")
    import_larql(fx.folder, tmp_path / "out", progress=False)
    with pytest.raises(ChecksumError, match=r"gate_vectors\.bin: sha256"):
        import_larql(fx.folder, tmp_path / "out2", gate_vectors=True, progress=False)


def test_gate_range_past_end_of_file(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", checksums=False)
    gv = fx.folder / "gate_vectors.bin"
    gv.write_bytes(gv.read_bytes()[:-8])
    import_larql(fx.folder, tmp_path / "ok", progress=False)  # not needed without --gate-vectors
    with pytest.raises(LarqlFormatError, match=r"gate_vectors\.bin: layer 2's gate range \[\d+, \d+\) runs past "
                                               r"the end of the file"):
        import_larql(fx.folder, tmp_path / "out", gate_vectors=True, progress=False)
    _no_vindex_written(tmp_path / "out")


def test_inconsistent_index_and_down_meta(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", checksums=False)
    index = json.loads((fx.folder / "index.json").read_text())
    index["layers"][1]["num_features"] = 13
    (fx.folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(LarqlFormatError, match=r"down_meta\.bin: layer 1 holds 12 features, .*index\.json says "
                                               r"num_features = 13"):
        import_larql(fx.folder, tmp_path / "out", progress=False)
    index["layers"][1]["num_features"] = 12
    index["num_layers"] = 4
    (fx.folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(LarqlFormatError, match=r"header says 3 layers, .*num_layers = 4"):
        import_larql(fx.folder, tmp_path / "out", progress=False)
    index["num_layers"] = 3
    index["layers"][0]["length"] += 4
    (fx.folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(LarqlFormatError, match=r"layer 0: length \d+ bytes != num_features 12 x hidden_size 8"):
        import_larql(fx.folder, tmp_path / "out", gate_vectors=True, progress=False)


def test_labels_of_another_extraction_are_rejected(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", labels=True)
    (fx.folder / "feature_labels.json").write_text(json.dumps({"L1_F99": "nope"}))
    with pytest.raises(LarqlFormatError, match=r"feature_labels\.json: layer 1 feature 99 does not exist"):
        import_larql(fx.folder, tmp_path / "out", progress=False)


def test_missing_inputs(tmp_path):
    with pytest.raises(NotFound, match="no such folder"):
        import_larql(tmp_path / "nope", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LarqlFormatError, match=r"index\.json: not found"):
        import_larql(tmp_path / "empty", tmp_path / "out", progress=False)
    fx = write_larql_fixture(tmp_path / "src")
    (fx.folder / "down_meta.bin").unlink()
    index = json.loads((fx.folder / "index.json").read_text())
    (fx.folder / "index.json").write_text(json.dumps({**index, "layers": []}))
    with pytest.raises(NotFound, match=r"no readable down_meta and no FFN features"):
        import_larql(fx.folder, tmp_path / "out", progress=False)


def test_reimport_replaces_and_foreign_out_is_refused(tmp_path, toy_vindex):
    fx = write_larql_fixture(tmp_path / "src", labels=True, ov_gate=True)
    out = tmp_path / "out"
    import_larql(fx.folder, out, gate_vectors=True, progress=False)
    # the same source again, now without the vectors: same tables, nothing stale left behind
    (fx.folder / "ov_gate_coupling.ndjson").unlink()
    fx = write_larql_fixture(tmp_path / "src", labels=True, ov_gate=False, seed=3)
    import_larql(fx.folder, out, progress=False)
    assert_matches_fixture(out, fx, gate_vectors=False)
    with pytest.raises(ManifestError, match="not an import of"):
        import_larql(fx.folder, toy_vindex, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ManifestError, match="exists and is not empty"):
        import_larql(fx.folder, tmp_path / "busy", progress=False)
    with pytest.raises(vindex.InvalidValue, match="a vindex name is"):
        import_larql(fx.folder, tmp_path / "named", name="bad name", progress=False)


def test_streams_gate_vectors_in_parts(tmp_path, monkeypatch):
    """A layer larger than the part budget is written in several shards, rows in order."""
    import vindex.ingest.larql.importer as mod
    monkeypatch.setattr(mod, "VECTOR_PART_BYTES", 5 * 8 * 4)   # five float32 rows of width 8
    fx = write_larql_fixture(tmp_path / "src", dtype="f16", moe=True)
    root = import_larql(fx.folder, tmp_path / "out", gate_vectors=True, progress=False)
    vx = Vindex.open(root)
    assert [e["path"].rsplit("/", 1)[1] for e in vx.files("features", layer=1)] == \
        ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert_matches_fixture(root, fx, gate_vectors=True)


def test_down_meta_header_struct_matches_the_documented_bytes(tmp_path):
    """The fixture writer itself: magic 0x444D4554 is b'TEMD' on disk, records 8 + 8*top_k bytes."""
    fx = write_larql_fixture(tmp_path / "src", n_layers=2, n_features=3, top_k=2)
    raw = (fx.folder / "down_meta.bin").read_bytes()
    assert raw[:4] == b"TEMD" and struct.unpack("<III", raw[4:16]) == (1, 2, 2)
    assert len(raw) == 16 + 2 * (4 + 3 * (8 + 8 * 2))
    assert fx.index["checksums"]["down_meta.bin"] == sha256(fx.folder / "down_meta.bin")


def test_without_tokenizer_ids_are_kept(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", n_layers=1)
    (fx.folder / "tokenizer.json").unlink()
    rows = Vindex.open(import_larql(fx.folder, tmp_path / "out", progress=False)).read("features").to_pylist()
    src = fx.layers[0]
    assert [r["top_token_id"] for r in rows] == [int(t) if h else None for t, h in zip(src.top_token_id, src.has_meta)]
    assert all(r["top_token"] is None for r in rows)
    assert all(p["token"] is None and p["token_id"] >= 0 for r in rows for p in r["top_tokens"] or [])
