"""The command line's errors and notes: one clear line that says what exists (poolings, layers),
no DuckDB prefix, bare Hub ids explained, token CKA refused before any Gram, confound notes, --quiet
everywhere, and a Vindex's notebook view."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from toy_lakes import DOCS, write_toy_lake

POOLINGS = ("mean_nosink", "mean", "last")
from vindex import Vindex
from vindex.cli import main
from vindex.cli.core import show_progress
from vindex.errors import InvalidValue


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    # DOCS with every pooling ingest writes (the default, mean_nosink, first)
    return write_toy_lake(tmp_path_factory.mktemp("cli-errors") / "lake", DOCS, poolings=POOLINGS)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_unknown_pooling_lists_the_poolings_there_are(lake):
    r = run("cka", "-l", lake, "toy-a", "toy-b", "--pooling", "lst")
    assert r.exit_code == 1
    assert r.output.strip() == ("error: cka_matrix: model 'toy-a' has no pooled rows with pooling = lst; its poolings: "
                                "last, mean, mean_nosink")


@pytest.mark.parametrize("function", ["cka_matrix", "cka_depth", "mutual_knn_matrix"])
def test_unknown_pooling_in_sql_lists_the_poolings_there_are(lake, function):
    r = run("sql", "-l", lake, f"SELECT * FROM {function}('toy-a', 'toy-b', pooling := 'lst')")
    assert r.exit_code == 1
    assert r.output.strip() == (f"error: {function}: model 'toy-a' has no pooled rows with pooling = lst; its poolings: "
                                "last, mean, mean_nosink")


def test_duckdb_prefix_is_stripped_in_sql(lake):
    r = run("sql", "-l", lake, "SELECT * FROM cka_matrix('toy-a', 'toy-b', permutations := -1)")
    assert r.exit_code == 1 and r.output.startswith("error: cka_matrix: permutations")
    assert "Invalid Input Error" not in r.output and "InvalidValue:" not in r.output


def test_layer_out_of_range_gives_the_range(lake):
    r = run("cluster", "-l", lake, "toy-a", "--layer", "99")
    assert r.exit_code == 1 and r.output.strip() == "error: --layer 99: 'toy-a' has features on layers 1-2"


def test_bare_hub_id_is_explained():
    from vindex.ingest.sources import resolve_model
    with pytest.raises(Exception, match="org/name"):
        resolve_model("gpt2-nonexistent-bare-name")


def test_token_cka_across_tokenizers_fails_first(lake):
    from vindex.query import cka_token_matrix, connect
    con = connect(lake)
    assert cka_token_matrix(con, "toy-a", "toy-b").num_rows == 5 * 7   # a shared tokenizer passes
    # another tokenizer: toy-b's token ids shifted, in the view the check reads
    con.execute("CREATE TABLE stored AS FROM activations")
    con.execute("CREATE OR REPLACE VIEW activations AS SELECT * REPLACE (CASE WHEN model = 'toy-b' "
                "THEN token_id + 1 ELSE token_id END AS token_id) FROM stored")
    with pytest.raises(InvalidValue, match="do not share a tokenizer"):
        cka_token_matrix(con, "toy-a", "toy-b")


def test_mean_pooling_carries_a_sink_note_and_quiet_keeps_it(lake):
    r = run("cka", "-l", lake, "toy-a", "toy-b", "--pooling", "mean", "--quiet")
    assert r.exit_code == 0 and "note: mean pooling includes the first content token" in r.output
    r = run("cka", "-l", lake, "toy-a", "toy-b", "--pooling", "mean", "-f", "csv")
    assert "note:" not in r.output


def test_the_defaults_print_the_null_and_no_confound_note(lake):
    """`vindex cka` with no options: mean_nosink, debiased, 99 permutations (vindex.defaults), so the
    grid marks p <= 0.01 and says its options; no confound applies, so no note."""
    r = run("cka", "-l", lake, "toy-a", "toy-b")
    assert r.exit_code == 0, r.output
    head = r.output.splitlines()[0]
    assert "pooling=mean_nosink, estimator=debiased" in head and "permutations=99" in head and "* = p <= 0.01" in head
    assert "note:" not in r.output


def test_last_pooling_and_no_null_carry_their_notes(lake):
    r = run("cka", "-l", lake, "toy-a", "toy-b", "--pooling", "last")
    assert r.exit_code == 0 and "note: last-token CKA below 40% depth mostly measures" in r.output
    r = run("cka", "-l", lake, "toy-a", "toy-b", "--permutations", "0")
    assert r.exit_code == 0 and "note: no permutation null" in r.output and "* = p" not in r.output


def test_every_reading_command_has_quiet():
    for name in ("view", "cka", "cluster", "sql", "build", "weights", "study"):
        assert any(p.name == "quiet" for p in main.commands[name].params), name


def test_no_progress_bars_without_a_terminal():
    # CliRunner's stderr is no terminal: bars are off even without --quiet
    assert show_progress(False) is False and show_progress(True) is False


def test_vindex_html_summary(lake):
    html = Vindex.open(lake / "toy-a")._repr_html_()
    assert "<table>" in html and "Vindex toy-a" in html and "<td>pooled</td>" in html and "<td>0-4</td>" in html
