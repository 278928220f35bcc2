"""Real LarQL files that must import (issue 19): each case is built from LarQL's documented format
and its writer's behaviour (tests/larql_fixtures.py), then imported and checked value for value."""
from __future__ import annotations

import json

import numpy as np
import pytest
from larql_fixtures import assert_matches_fixture, write_larql_fixture, write_tokenizer

from vindex import Vindex
from vindex.errors import LarqlImportWarning
from vindex.ingest.larql import import_larql


def _index(fx):
    return json.loads((fx.folder / "index.json").read_text())


def _write_index(fx, index):
    (fx.folder / "index.json").write_text(json.dumps(index))


# 1. MoE with a shared expert: LarQL's non-streaming build appends its rows after the routed experts
@pytest.mark.parametrize("gate_vectors", [True, False])
def test_moe_with_shared_expert_rows(tmp_path, gate_vectors):
    fx = write_larql_fixture(tmp_path / "src", moe=True, shared_features=5, ov_gate=True, labels=True)
    li = _index(fx)["layers"][1]
    assert li["num_features"] == li["num_experts"] * li["num_features_per_expert"] + 5
    root = import_larql(fx.folder, tmp_path / "out", gate_vectors=gate_vectors, progress=False)
    assert_matches_fixture(root, fx, gate_vectors)   # shared rows: expert = num_experts, feature 0..4
    vx = Vindex.open(root)
    shared = vx.manifest["extraction"]["moe"]["shared_expert"]
    assert shared["expert"] == 3 and shared["features"] == {"2": 5, "3": 5}
    rows = vx.read("features").to_pylist()
    assert sorted(r["feature"] for r in rows if r["layer"] == 2 and r["expert"] == 3) == [0, 1, 2, 3, 4]


def test_shared_rows_refused_when_index_says_no_shared_expert(tmp_path):
    from vindex.errors import LarqlFormatError
    fx = write_larql_fixture(tmp_path / "src", moe=True, shared_features=2, checksums=False)
    index = _index(fx)
    index["model_config"]["moe"]["shared_expert"] = False
    _write_index(fx, index)
    with pytest.raises(LarqlFormatError, match=r"shared expert, but model_config\.moe\.shared_expert is false"):
        import_larql(fx.folder, tmp_path / "out", progress=False)


# 2. down_meta.bin whose magic is the literal bytes b"DMET"
def test_down_meta_with_literal_dmet_magic(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", literal_magic=True, labels=True)
    assert (fx.folder / "down_meta.bin").read_bytes()[:4] == b"DMET"
    root = import_larql(fx.folder, tmp_path / "out", gate_vectors=True, progress=False)
    assert_matches_fixture(root, fx, gate_vectors=True)
    assert Vindex.open(root).manifest["extraction"]["down_meta"]["magic"] == "b'DMET' (literal)"


# 3. feature_labels.json with foreign keys, or in the rich list format; 7. rich confidence, "(probe)"
def test_label_files_foreign_keys_warn_and_never_fail(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", labels=True)
    (fx.folder / "feature_labels.json").write_text(json.dumps(
        {"L1_F3": "capital", "2:4": "language", "layer1/feature2": "x", "L0_F1": 7}))
    fx.labels = {(1, 3): "capital", (2, 4): "language"}
    with pytest.warns(LarqlImportWarning, match=r"feature_labels\.json: 2 entries skipped .*layer1/feature2"):
        root = import_larql(fx.folder, tmp_path / "out", progress=False)
    assert_matches_fixture(root, fx, gate_vectors=False)
    labels = Vindex.open(root).manifest["extraction"]["labels"]
    assert len(labels["skipped"]["feature_labels.json"]) == 2
    (fx.folder / "feature_labels.json").write_text("{not json")
    fx.labels = {}
    with pytest.warns(LarqlImportWarning, match=r"feature_labels\.json: 1 entry skipped"):
        root = import_larql(fx.folder, tmp_path / "out2", progress=False)
    assert_matches_fixture(root, fx, gate_vectors=False)


def test_rich_label_formats_with_confidence_and_probe_source(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", moe=True)
    # the rich list (LarQL's knowledge tooling) in feature_labels.json ...
    (fx.folder / "feature_labels.json").write_text(json.dumps([
        {"layer": 1, "feature": 5, "relation": "capital", "source": "probe", "confidence": 0.97, "examples": []},
        {"layer": 2, "feature": 0, "relation": "currency", "source": "manual", "confidence": 1.0},
        {"feature": 3, "relation": "no layer"}]))
    # ... and the probe's details file: {"L<l>_F<f>": {"primary", "confidence", ...}}
    (fx.folder / "feature_labels_rich.json").write_text(json.dumps({
        "L1_F5": {"primary": "capital-city", "confidence": 0.5, "hits": 4},
        "L0_F2": {"primary": "plural", "confidence": 0.75, "hits": 3, "relations": {"plural": 3}}}))
    fx.labels = {(1, 5): "capital", (2, 0): "currency", (0, 2): "plural"}
    with pytest.warns(LarqlImportWarning, match=r"entry 2: not a \{layer, feature, relation\} record"):
        root = import_larql(fx.folder, tmp_path / "out", progress=False)
    assert_matches_fixture(root, fx, gate_vectors=False)   # feature_labels.json's label wins
    labels = Vindex.open(root).manifest["extraction"]["labels"]
    assert labels["files"] == ["feature_labels.json", "feature_labels_rich.json"]
    assert labels["sources"] == {"probe": 2, "manual": 1}
    # layer 1 is MoE (3 experts x 4): flat 5 = expert 1, feature 1; stored at vindex layer 2
    assert labels["confidence"]["by_layer"] == {"1": {"2": 0.75}, "2": {"1:1": 0.97}, "3": {"0:0": 1.0}}


# 4. summary-tier MoE: rows are SVD directions, never paired with down_meta
def test_summary_tier_moe_is_detected_and_not_paired(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", moe=True, checksums=False)
    index = _index(fx)
    index["model_config"]["moe"]["moe_intermediate_size"] = 16    # > 4 rows kept per expert
    _write_index(fx, index)
    root = import_larql(fx.folder, tmp_path / "out", gate_vectors=True, progress=False)
    vx = Vindex.open(root)
    tier = vx.manifest["extraction"]["moe"]["summary_tier"]
    assert tier["layers"] == [2, 3] and tier["features_per_expert"] == [4] and tier["moe_intermediate_size"] == 16
    assert tier["down_meta_records_not_paired"] == {"2": 12, "3": 12}
    assert "SVD direction" in vx.manifest["extraction"]["gate_vectors"]["meaning"]
    rows = vx.read("features").to_pylist()
    summary = [r for r in rows if r["layer"] in (2, 3)]
    assert len(summary) == 24 and all(r["top_token"] is None and r["c_score"] is None for r in summary)
    for r in summary:   # the SVD vectors themselves are imported exactly
        src = fx.layers[r["layer"] - 1]
        np.testing.assert_array_equal(np.asarray(r["vector"], np.float32), src.gate[r["expert"] * 4 + r["feature"]])
    dense = [r for r in rows if r["layer"] == 1]   # the dense layer keeps its down_meta
    assert sum(r["top_token"] is not None for r in dense) > 0


# 6. no readable down_meta: gates and labels still import, and the import says what is missing
@pytest.mark.parametrize("how", ["absent", "zero-bytes"])
def test_without_down_meta_imports_gates_and_labels(tmp_path, how):
    fx = write_larql_fixture(tmp_path / "src", labels=True, checksums=False)
    if how == "absent":
        (fx.folder / "down_meta.bin").unlink()
    else:
        (fx.folder / "down_meta.bin").write_bytes(b"")
    for src in fx.layers.values():
        src.has_meta[:] = False
    with pytest.warns(LarqlImportWarning, match=r"down_meta \((0-byte down_meta\.bin|no down_meta\.bin or "
                                                r"down_meta\.jsonl)\): top_token.*null"):
        root = import_larql(fx.folder, tmp_path / "out", gate_vectors=True, progress=False)
    assert_matches_fixture(root, fx, gate_vectors=True)
    ex = Vindex.open(root).manifest["extraction"]
    assert ex["down_meta"] is None and "down_meta" in ex["missing"][0]


# 7. token ids at or above get_vocab_size() that the tokenizer decodes; quant / fp4 / ffn_layout
def test_added_token_above_vocab_size_is_decoded(tmp_path):
    from tokenizers import AddedToken, Tokenizer
    fx = write_larql_fixture(tmp_path / "src", checksums=False, n_layers=1)
    tok = Tokenizer.from_file(str(fx.folder / "tokenizer.json"))
    size = tok.get_vocab_size(with_added_tokens=True)
    # an added token with an id past the vocabulary (as some Gemma/Llama tokenizers carry)
    # a vocabulary with a hole: its last token's id is past get_vocab_size() (the count of tokens)
    raw = json.loads(tok.to_str())
    raw["model"]["vocab"]["<extra>"] = size + 10
    (fx.folder / "tokenizer.json").write_text(json.dumps(raw))
    tok = Tokenizer.from_file(str(fx.folder / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) < size + 10 and tok.decode([size + 10]) == "<extra>"
    src = fx.layers[0]
    src.top_token_id[0] = src.token_ids[0, 0] = size + 10
    src.top_token_id[1] = src.token_ids[1, 0] = size + 99      # unknown to the tokenizer: null text
    from larql_fixtures import write_down_meta_bin
    write_down_meta_bin(fx.folder / "down_meta.bin", [src], fx.top_k)
    index = _index(fx)
    index.update(quant="q4k", fp4={"format": "nvfp4", "block": 16}, ffn_layout="interleaved")
    _write_index(fx, index)
    vx = Vindex.open(import_larql(fx.folder, tmp_path / "out", progress=False))
    rows = {r["feature"]: r for r in vx.read("features").to_pylist()}
    assert rows[0]["top_token"] == "<extra>" and rows[0]["top_tokens"][0]["token"] == "<extra>"
    assert rows[1]["top_token_id"] == size + 99 and rows[1]["top_token"] is None
    larql = vx.manifest["extraction"]["larql"]
    assert (larql["quant"], larql["fp4"], larql["ffn_layout"]) == ("q4k", {"format": "nvfp4", "block": 16},
                                                                   "interleaved")


def test_ov_gate_target_token_is_checked_against_top_token(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", moe=True, shared_features=2, ov_gate=True, checksums=False)
    path = fx.folder / "ov_gate_coupling.ndjson"
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    row["target_token"] = "not-the-top-token"
    path.write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    vx = Vindex.open(import_larql(fx.folder, tmp_path / "out", progress=False))
    meta = vx.manifest["extraction"]["ov_gate"]["target_token"]
    given = sum(1 for x in fx.ov_rows if x["target_token"]) + (row["target_token"] != lines[1] and
                                                                not json.loads(lines[1])["target_token"])
    assert meta["rows"] == given and meta["agree"] == given - 1   # "" (no top token) is not a target
    (d,) = meta["differ"]
    assert d["target_token"] == "not-the-top-token" and d["layer"] == row["layer"] + 1
    assert d["top_token"] == fx.token_text[int(fx.layers[row["layer"]].top_token_id[row["feature_idx"]])] \
        or not fx.layers[row["layer"]].has_meta[row["feature_idx"]]


# 5. LarQL's bare `org/name` (no hf://): the model repo, then the dataset repo, as LarQL looks
def test_bare_org_name_is_looked_up_on_the_hub(hub_server, tmp_path, monkeypatch):
    from vindex.errors import NotFound
    monkeypatch.chdir(tmp_path)
    fx = write_larql_fixture(tmp_path / "src", labels=True)
    hub_server.put_folder("vindex-org/bare-dataset", fx.folder, repo_type="dataset")
    root = import_larql("vindex-org/bare-dataset", tmp_path / "out", progress=False)
    assert_matches_fixture(root, fx, gate_vectors=False)
    assert Vindex.open(root).manifest["extraction"]["imported_from"]["repo_type"] == "dataset"
    with pytest.raises(NotFound, match=r"vindex-org/none: no such folder, and on the Hub: .*no model repo"):
        import_larql("vindex-org/none", tmp_path / "out2", progress=False)
