"""A lake folder (two or more vindexes) carries its own dataset card, README.md: a section per
vindex and a `configs:` entry per (vindex, table), refreshed by every member's commit, so the real
`datasets.load_dataset(<lake>, "<vindex>-<table>")` reads each table of each vindex."""
from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from toy_lakes import ToyModel, write_toy_lake, write_toy_vindex
from vindex import Vindex
from vindex.hub.card import GENERATED, write_lake_card

datasets = pytest.importorskip("datasets")     # in the dev extra


def front(card: str) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, re.S).group(1))


@pytest.fixture
def lake(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return write_toy_lake(tmp_path / "lake", models=(ToyModel("alpha", 2, 8, seed=1), ToyModel("beta", 3, 4, seed=2)))


def test_a_lake_card_lists_every_vindex_and_a_config_per_table(lake):
    card = (lake / "README.md").read_text()
    meta = front(card)
    names = {c["config_name"] for c in meta["configs"]}
    assert names == {f"{m}-{t}" for m in ("alpha", "beta") for t in ("prompts", "pooled", "activations")}
    assert "## alpha (`alpha/`)" in card and "## beta (`beta/`)" in card
    assert meta["pretty_name"] == "vindex: alpha, beta" and card.rstrip().endswith(GENERATED)


def test_load_dataset_reads_each_vindexs_table_from_the_lake(lake, tmp_path):
    for name in ("alpha", "beta"):
        got = datasets.load_dataset(str(lake), f"{name}-pooled", split="train", cache_dir=str(tmp_path / "hf"))
        want = Vindex.open(lake / name).read("pooled")
        assert got.num_rows == want.num_rows and set(got["model"]) == {name}
        key = lambda r: (r["layer"], r["prompt_id"])       # noqa: E731
        rows = sorted(got, key=key)
        ref = sorted(want.to_pylist(), key=key)
        np.testing.assert_array_equal(np.array([r["act"] for r in rows], np.float32),
                                      np.array([r["act"] for r in ref], np.float32))


def test_a_members_commit_refreshes_the_lake_card(lake):
    write_toy_vindex(lake / "gamma", "gamma", n_layers=2)          # a third vindex commits
    meta = front((lake / "README.md").read_text())
    assert "gamma-pooled" in {c["config_name"] for c in meta["configs"]}
    assert write_lake_card(lake) is False                            # up to date: not rewritten


def test_one_vindex_is_no_lake_and_a_users_readme_is_kept(tmp_path):
    write_toy_vindex(tmp_path / "only" / "a", "a")
    assert not (tmp_path / "only" / "README.md").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("my notes\n")
    for name in ("a", "b"):
        write_toy_vindex(tmp_path / "mine" / name, name)
    assert (tmp_path / "mine" / "README.md").read_text() == "my notes\n"
