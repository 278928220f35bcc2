"""The LarQL file readers (format, labels, ov-gate): layouts, edge cases and the errors that name the file."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from larql_fixtures import write_larql_fixture

from vindex.ingest.larql import format as lf
from vindex.ingest.larql import labels
from vindex.ingest.larql import ov_gate as ov


def test_down_meta_bin_layers_and_padding(tmp_path):
    fx = write_larql_fixture(tmp_path, n_layers=2, n_features=12, top_k=4)
    dm = lf.DownMetaBin(tmp_path / "down_meta.bin")
    assert (dm.num_layers, dm.top_k, dm.record.itemsize) == (2, 4, 8 + 8 * 4)
    m = dm.layer(1)
    src = fx.layers[1]
    np.testing.assert_array_equal(m.has_meta, src.has_meta)
    np.testing.assert_array_equal(m.pair_valid.sum(axis=1)[src.has_meta], src.n_valid[src.has_meta])
    np.testing.assert_array_equal(m.top_token_id, src.top_token_id)
    np.testing.assert_array_equal(m.logits, src.logits)


def test_down_meta_bin_errors(tmp_path):
    p = tmp_path / "down_meta.bin"
    p.write_bytes(struct.pack("<IIII", 0x12345678, 1, 1, 2))
    with pytest.raises(lf.LarqlFormatError, match=r"down_meta\.bin: magic 0x12345678 is not 0x444D4554"):
        lf.DownMetaBin(p)
    p.write_bytes(struct.pack("<IIII", lf.DOWN_META_MAGIC, 2, 1, 2))
    with pytest.raises(lf.LarqlFormatError, match="down_meta version 2 is not supported"):
        lf.DownMetaBin(p)
    p.write_bytes(struct.pack("<IIII", lf.DOWN_META_MAGIC, 1, 2, 2) + struct.pack("<I", 0))
    with pytest.raises(lf.LarqlFormatError, match="declares 2 layers, but the file ends at byte 20 before layer 1"):
        lf.DownMetaBin(p)
    # an empty layer has no records; a zero-feature file is fine
    p.write_bytes(struct.pack("<IIII", lf.DOWN_META_MAGIC, 1, 2, 2) + struct.pack("<II", 0, 0))
    dm = lf.DownMetaBin(p)
    assert dm.layer(0).num_features == 0 and dm.num_features(1) == 0


def test_feature_labels_both_key_styles(tmp_path):
    p = tmp_path / "feature_labels.json"
    p.write_text(json.dumps({"L3_F12": "capital", "4:7": "language"}))
    assert labels.read_feature_labels(p).labels == {(3, 12): "capital", (4, 7): "language"}
    # a key that is not a feature key is skipped and reported (LarQL skips it silently), never fatal
    p.write_text(json.dumps({"layer3/feature12": "x", "L1_F2": "y"}))
    got = labels.read_feature_labels(p)
    assert got.labels == {(1, 2): "y"}
    assert len(got.skipped) == 1 and "key 'layer3/feature12' is neither" in got.skipped[0]


def test_cluster_files(tmp_path):
    rc = tmp_path / "relation_clusters.json"
    rc.write_text(json.dumps({"k": 2, "centres": [[0.0], [1.0]], "labels": ["a", "b"], "counts": [1, 2],
                              "top_tokens": [["x"], ["y"]]}))
    assert labels.read_relation_clusters(rc) == {"k": 2, "labels": ["a", "b"], "counts": [1, 2],
                                             "top_tokens": [["x"], ["y"]]}
    rc.write_text(json.dumps({"k": 3, "labels": ["a", "b"]}))
    with pytest.raises(lf.LarqlFormatError, match="k = 3 but 2 labels"):
        labels.read_relation_clusters(rc)
    fc = tmp_path / "feature_clusters.jsonl"
    fc.write_text('{"l": 1, "f": 2, "c": 0}\n\n{"l": 1, "f": 3, "c": 1}\n')
    assert labels.read_feature_clusters(fc) == {(1, 2): 0, (1, 3): 1}
    fc.write_text('{"l": 1, "f": 2}\n')
    with pytest.raises(lf.LarqlFormatError, match=r"feature_clusters\.jsonl: line 1"):
        labels.read_feature_clusters(fc)


def test_down_meta_jsonl(tmp_path):
    p = tmp_path / "down_meta.jsonl"
    p.write_text(json.dumps({"l": 0, "f": 2, "t": " Paris", "i": 7, "c": 3.5,
                             "k": [{"t": " Paris", "i": 7, "s": 3.5}, {"t": "Rome", "i": 9, "s": 1.25}]}) + "\n")
    m = lf.read_down_meta_jsonl(p, {0: 4})[0]
    assert m.num_features == 4 and m.has_meta.tolist() == [False, False, True, False]
    assert m.token_ids[2].tolist() == [7, 9] and m.tokens[2].tolist() == [" Paris", "Rome"]
    p.write_text('{"l": 0, "f": 9}\n')
    with pytest.raises(lf.LarqlFormatError, match="layer 0 feature 9 is out of range"):
        lf.read_down_meta_jsonl(p, {0: 4})
    p.write_text("not json\n")
    with pytest.raises(lf.LarqlFormatError, match=r"down_meta\.jsonl: line 1"):
        lf.read_down_meta_jsonl(p)


def test_index_errors(tmp_path):
    p = tmp_path / "index.json"
    p.write_text(json.dumps({"version": 3, "num_layers": 1, "hidden_size": 4}))
    with pytest.raises(lf.LarqlFormatError, match="version 3 is not supported"):
        lf.read_index(tmp_path)
    p.write_text(json.dumps({"num_layers": 1}))
    with pytest.raises(lf.LarqlFormatError, match="missing required field 'hidden_size'"):
        lf.read_index(tmp_path)
    p.write_text(json.dumps({"num_layers": 1, "hidden_size": 4, "dtype": "q4k"}))
    with pytest.raises(lf.LarqlFormatError, match="dtype 'q4k' is not one of"):
        lf.read_index(tmp_path)
    p.write_text(json.dumps({"num_layers": 1, "hidden_size": 4, "layers": [
        {"layer": 0, "num_features": 10, "offset": 0, "length": 160, "num_experts": 4, "num_features_per_expert": 3}]}))
    with pytest.raises(lf.LarqlFormatError, match=r"num_experts \(4\) x num_features_per_expert \(3\) != "
                                                  r"num_features \(10\)"):
        lf.read_index(tmp_path)
    p.write_text("{")
    with pytest.raises(lf.LarqlFormatError, match=r"index\.json: not valid JSON"):
        lf.read_index(tmp_path)


def test_gate_vectors_memory_mapped_per_layer(tmp_path):
    fx = write_larql_fixture(tmp_path, dtype="f16", moe=True)
    index = lf.read_index(tmp_path)
    gv = lf.GateVectors(tmp_path / "gate_vectors.bin", index)
    block = gv.layer(2)
    assert isinstance(block, np.memmap) and block.shape == (12, 8) and block.dtype == np.float16
    np.testing.assert_array_equal(gv.rows(2, 3, 7), fx.layers[2].gate[3:7])
    expert, feature = index.layer(2).split(np.array([0, 4, 11]))   # 3 experts x 4 features, contiguous
    assert (expert.tolist(), feature.tolist()) == ([0, 1, 2], [0, 0, 3])
    assert index.layer(0).split(np.array([5]))[0] is None           # layer 0 is dense


def test_bf16_gate_vectors_widen_exactly(tmp_path):
    fx = write_larql_fixture(tmp_path, dtype="bf16")
    gv = lf.GateVectors(tmp_path / "gate_vectors.bin", lf.read_index(tmp_path))
    rows = gv.rows(1, 0, 12)
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, fx.layers[1].gate)
    assert lf.vector_dtype_for(lf.read_index(tmp_path)) == "float32"


def test_ov_gate_header_sniffing(tmp_path):
    per_layer = tmp_path / "a.ndjson"
    per_layer.write_text(json.dumps({"_header": True, "type": "ov_gate_coupling", "num_q_heads": 2, "layers": [0]})
                         + "\n" + json.dumps({"head": "L0_H1", "layer": 0, "feature": "L0_F5", "feature_layer": 0,
                                              "coupling": 1.5, "total_coupling": 9.0}) + "\n")
    rows = ov.read_ov_gate(per_layer)   # head_idx / feature_idx missing: parsed from the names
    assert (rows.head.tolist(), rows.feature.tolist(), rows.coupling.tolist()) == ([1], [5], [1.5])
    edges = tmp_path / "ov_gate_edges.jsonl"
    edges.write_text(json.dumps({"_header": True, "type": "ov_gate_coupling", "num_edges": 0}) + "\n")
    assert ov.ov_gate_header(edges) is None
    (tmp_path / "other.jsonl").write_text('{"l": 0}\n')
    assert ov.ov_gate_header(tmp_path / "other.jsonl") is None
    per_layer.write_text(per_layer.read_text().splitlines()[0] + '\n{"layer": 0, "coupling": 1}\n')
    with pytest.raises(lf.LarqlFormatError, match=r"a\.ndjson: line 2: not an ov-gate row"):
        ov.read_ov_gate(per_layer)
