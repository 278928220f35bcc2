"""`vindex measure`: the thin shell over vindex.query.measure_depth prints the library's rows (the same
values, in csv and json), its notes, and the library's refusals as one line."""
from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from toy_lakes import DOCS, write_toy_lake
from vindex.cli import main
from vindex.cli.measure import COLUMNS, MEASURES
from vindex.query import measure_depth, measures


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("measure-cli")
    write_toy_lake(root, DOCS)
    write_toy_lake(root, DOCS, models=(DOCS.models[1].__class__("toy-short", 3, 8, seed=5),), n_prompts=31)
    return root


def run(*args):
    return CliRunner().invoke(main, ["measure", *map(str, args)])


def test_the_choices_are_the_library_measures():
    assert MEASURES == measures.MEASURES


@pytest.mark.parametrize("name, extra", [("pwcca", ["--dims", "4"]), ("cknna", ["-k", "5"]), ("rsa", [])])
def test_csv_rows_are_measure_depth(lake, name, extra):
    res = run("-l", lake, "toy-a", "toy-b", "--measure", name, "--permutations", "9", "--seed", "3", *extra,
              "-f", "csv")
    assert res.exit_code == 0, res.output
    got = list(csv.DictReader(io.StringIO(res.output)))
    options = dict(dims=4) if name == "pwcca" else dict(k=5) if name == "cknna" else {}
    want = measure_depth(lake, "toy-a", "toy-b", measure=name, permutations=9, seed=3, **options).to_pylist()
    assert list(got[0]) == COLUMNS and len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert (int(g["layer_a"]), int(g["layer_b"]), g["measure"]) == (w["layer_a"], w["layer_b"], name)
        for key in ("value", "null_p95", "p_value"):
            assert float(g[key]) == pytest.approx(w[key], rel=1e-12), key


def test_json_and_the_default_measure(lake):
    res = run("-l", lake, "toy-a", "toy-b", "--permutations", "0", "-f", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    want = measure_depth(lake, "toy-a", "toy-b", permutations=0).to_pylist()
    assert [r["measure"] for r in rows] == ["pwcca"] * len(want)           # the library's default
    assert [r["value"] for r in rows] == pytest.approx([w["value"] for w in want], rel=1e-12)
    assert all(r["p_value"] is None for r in rows)


def test_table_notes(lake):
    res = run("-l", lake, "toy-a", "toy-b", "--measure", "procrustes", "--permutations", "0")
    assert res.exit_code == 0, res.output
    assert "layer_a" in res.output and "procrustes" in res.output
    assert "note: no permutation null" in res.output and "note: procrustes is a distance" in res.output


def test_refusals_are_one_line(lake):
    res = run("-l", lake, "toy-a", "toy-short", "--measure", "rsa", "--permutations", "0")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "measure_depth: layer" in res.output and "hold different prompts (32 vs 31 rows)" in res.output
    res = run("-l", lake, "toy-a", "nope")
    assert res.exit_code == 1 and "unknown model 'nope'" in res.output
    res = run("-l", lake, "toy-a", "toy-b", "--measure", "svcca", "--dims", "16")
    assert res.exit_code == 1 and "dims = 16 needs n > 2 dims = 32 rows" in res.output
    res = run("-l", lake, "toy-a", "toy-b", "--measure", "cka")
    assert res.exit_code == 2 and "'cka' is not one of" in res.output
