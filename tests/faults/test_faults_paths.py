"""Glob characters, spaces and non-ASCII in vindex and lake folder names: each query reads exactly
the folder it was given, never a neighbour a glob would also match (`exp[1]` matches `exp1`, `run*`
matches `run1` and `run2`), and returns the numbers the same vindex gives at a plain path.

Each case puts the target vindex (model `target`) in a folder of the odd name, beside neighbours
(other models, other numbers) whose names the odd one matches as a glob, and asks: SQL over the
vindex folder and over the lake, cka_matrix, Vindex.read, verify and `vindex sql`.
"""
from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

import fault_harness as fh

GROUP = "glob and unicode paths"
# the odd folder name -> neighbours that it matches as a glob (or that look alike)
VINDEX_NAMES = {
    "exp[1]": ["exp1"],
    "run*": ["run1", "run2"],
    "x?y": ["xzy"],
    "[ab]": ["a", "b"],
    "q{1,2}": ["q1", "q2"],
    "**": ["anything"],
    "a b": ["a"],
    "ünïcödé-模型": ["unicode"],
    "emoji-😀": ["emoji-x"],
    "pct%41": ["pctA"],
    "back\\slash": ["back"],
    "quote'and\"": ["quote"],
}
LAKE_NAMES = {"lake[1]": ["lake1"], "lakes*": ["lakes-a"], "lac ü 1": ["lac"]}


def _arrow(rel):
    r = rel.arrow()
    return r.read_all() if hasattr(r, "read_all") else r


def _write(folder, name: str, seed: int):
    from toy_lakes import write_toy_vindex
    return write_toy_vindex(folder, name=name, seed=seed)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The target vindex at a plain path, and what every probe returns there."""
    from vindex import Vindex
    from vindex.query import connect
    root = _write(tmp_path_factory.mktemp("plain") / "target", "target", 7)
    con = connect(root)
    return root, {
        "SQL (vindex folder)": _arrow(con.sql("SELECT * FROM pooled")),
        "SQL (lake)": _arrow(con.sql("SELECT * FROM pooled")),
        "cka_matrix": _arrow(con.sql("SELECT * FROM cka_matrix('target', 'target')")),
        "count(*)": con.sql("SELECT count(*) FROM activations").fetchall(),
        "Vindex.read": Vindex.open(root).read("activations"),
        "vindex sql": _cli_sql(root).output,
    }


def _cli_sql(path):
    from vindex.cli import main
    return CliRunner().invoke(main, ["sql", "-l", str(path), "SELECT count(*) AS n, sum(norm) AS s FROM activations",
                                     "--format", "csv"])


def _probes(v: fh.Verdict, lake, target, expected) -> None:
    from vindex import Vindex, verify
    from vindex.query import connect
    v.probe("SQL (vindex folder)", lambda: _arrow(connect(target).sql("SELECT * FROM pooled")),
            expected["SQL (vindex folder)"])
    v.probe("SQL (lake)", lambda: _arrow(connect(lake).sql("SELECT * FROM pooled WHERE model = 'target'")),
            expected["SQL (lake)"])
    v.probe("cka_matrix", lambda: _arrow(connect(target).sql("SELECT * FROM cka_matrix('target', 'target')")),
            expected["cka_matrix"])
    v.probe("count(*)", lambda: connect(target).sql("SELECT count(*) FROM activations").fetchall(),
            expected["count(*)"])
    v.probe("Vindex.read", lambda: Vindex.open(target).read("activations"), expected["Vindex.read"])
    v.probe("verify", lambda: verify(target), compare=lambda p: (not p, "verify: sound" if not p else str(p[0])))
    r = _cli_sql(target)
    if r.exit_code == 0 and r.exception is None:
        v.note(fh.HANDLED if r.output == expected["vindex sql"] else fh.SILENT_WRONG,
               f"vindex sql: {r.output.strip()!r}" + ("" if r.output == expected["vindex sql"] else
                                                     f" where the plain path gives {expected['vindex sql'].strip()!r}"))
    else:
        v.cli("vindex sql", r)


@pytest.mark.parametrize("name", list(VINDEX_NAMES))
def test_odd_vindex_folder_name(verdict, plain, tmp_path, name):
    root, expected = plain
    lake = tmp_path / "lake"
    for i, other in enumerate(VINDEX_NAMES[name]):
        _write(lake / other, f"n{i}", 100 + i)
    target = lake / name
    shutil.copytree(root, target)
    verdict.injected(f"the vindex folder is {name!r}, beside {VINDEX_NAMES[name]}")
    _probes(verdict, lake, target, expected)
    verdict.done()


@pytest.mark.parametrize("name", list(LAKE_NAMES))
def test_odd_lake_folder_name(verdict, plain, tmp_path, name):
    root, expected = plain
    for i, other in enumerate(LAKE_NAMES[name]):
        _write(tmp_path / other / "target", "target", 200 + i)       # the same model name, other numbers
    lake = tmp_path / name
    target = lake / "target"
    shutil.copytree(root, target)
    verdict.injected(f"the lake folder is {name!r}, beside lakes {LAKE_NAMES[name]} holding another 'target'")
    _probes(verdict, lake, target, expected)
    verdict.done()
