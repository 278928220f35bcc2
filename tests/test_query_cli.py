"""`vindex sql`, `vindex cka`, `vindex cluster`: formats, files, stdin, the shell, clear errors."""
import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from toy_lakes import DOCS, write_toy_lake
from vindex.cli import main


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return write_toy_lake(tmp_path_factory.mktemp("cli") / "lake", DOCS)


def run(*args, input=None, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


def test_sql_formats(lake, tmp_path):
    q = "SELECT model, n_layers FROM models ORDER BY model"
    r = run("sql", "-l", lake, q)
    assert r.exit_code == 0 and "toy-a" in r.output and "│" in r.output
    r = run("sql", "-l", lake, q, "--format", "csv")
    assert r.output.splitlines() == ["model,n_layers", "toy-a,4", "toy-b,6"]
    r = run("sql", "-l", lake, q, "-f", "json")
    assert json.loads(r.output) == [{"model": "toy-a", "n_layers": 4}, {"model": "toy-b", "n_layers": 6}]
    out = tmp_path / "cka.parquet"
    r = run("sql", "-l", lake, "SELECT * FROM cka_matrix('toy-a', 'toy-b')", "-f", "parquet", "-o", out)
    assert r.exit_code == 0 and pq.read_table(out).num_rows == 35
    r = run("sql", "-l", lake, q, "-f", "parquet")
    assert r.exit_code != 0 and "--output" in r.output


def test_sql_file_stdin_and_env(lake, tmp_path):
    script = tmp_path / "a.sql"
    script.write_text("CREATE TEMP TABLE m AS SELECT * FROM cka_matrix('toy-a', 'toy-b');\n"
                      "SELECT count(*) AS pairs FROM m;\n")
    r = run("sql", "-l", lake, script, "-f", "csv")
    assert r.output.splitlines() == ["pairs", "35"]
    r = run("sql", "-f", "csv", input="SELECT 41 + 1 AS answer;", env={"VINDEX_LAKE": str(lake)})
    assert r.output.splitlines() == ["answer", "42"]


def test_shell(lake):
    r = run("sql", "-l", lake, "-i", input=".models\nSELECT count(*)\n  AS n FROM pooled;\nSELECT nope;\n.quit\n")
    assert r.exit_code == 0
    assert "toy-b" in r.output and "384" in r.output
    assert "error:" in r.output and "nope" in r.output  # a bad statement does not end the shell


def test_errors_are_one_clear_line(lake, tmp_path):
    r = run("sql", "-l", lake, "SELECT * FROM cka_matrix('toy-a', 'zz')")
    assert r.exit_code == 1
    assert r.output.strip() == "error: cka_matrix: unknown model 'zz'; the lake holds: toy-a, toy-b"
    r = run("sql", "-l", tmp_path / "missing", "SELECT 1")
    assert r.exit_code == 1 and "no such folder" in r.output
    r = run("cka", "-l", lake, "toy-a", "toy-b", "--kernel", "poly")
    assert r.exit_code == 1 and "unknown kernel 'poly'" in r.output and "Traceback" not in r.output


def test_cka_grid_depth_and_plot(lake, tmp_path):
    png = tmp_path / "cka.png"
    r = run("cka", "-l", lake, "toy-a", "toy-b", "--permutations", "99", "--plot", png)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("CKA  rows: toy-a layer") and "permutations=99" in lines[0]
    assert lines[1].split() == [str(i) for i in range(7)]
    assert lines[3].split()[:2] == ["0", "(0.00)"] and "*" in lines[3]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    r = run("cka", "-l", lake, "toy-a", "toy-b", "--depth", "--estimator", "debiased")
    assert r.exit_code == 0 and "margin" in r.output and "diagonal" in r.output
    r = run("cka", "-l", lake, "toy-a", "toy-b", "-f", "json")
    rows = json.loads(r.output)
    assert len(rows) == 35 and {"layer_a", "layer_b", "cka", "estimator"} <= set(rows[0])


def test_cluster(lake, tmp_path):
    out = tmp_path / "clusters.parquet"
    r = run("cluster", "-l", lake, "toy-a", "--layer", "1", "-k", "3", "--against", "label", "-o", out)
    assert r.exit_code == 0, r.output
    assert "nmi" in r.output and "1.0" in r.output
    t = pq.read_table(out)
    assert t.num_rows == 30 and {"feature", "cluster", "distance"} <= set(t.column_names)
    r = run("cluster", "-l", lake, "toy-a", "--against", "colour")
    assert r.exit_code == 1 and "no column 'colour'" in r.output
