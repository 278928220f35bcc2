"""Bit flips, truncations and tampering of every table's shards and of vindex.json: every query
returns the exact original numbers or raises a named error, never a different number.

The lake: two toy models `a` and `b` (tests/toy_lakes.py) with all six tables (prompts,
activations, pooled, features, ov_gate, layer_stats). Only `a`'s files are damaged, in place, in
one working copy that stays warm between cases (the verified-shard memo has seen every file before
it is damaged, so a memo that trusted an old hash would show here); each case restores what it
touched. The probes of a case:

  * connect() and SQL over the table's view, every row (`SELECT * FROM <table>`);
  * the analyses that read the table: cka_matrix and mutual_knn_matrix (pooled, prompts),
    cka_token_matrix (activations), kmeans (features);
  * Vindex.read of the table;
  * verify() and `vindex verify`: they must report a problem whenever the bytes differ from what the
    manifest records (saying "sound" about damaged bytes is a wrong answer too); for a bit flip in
    vindex.json, whenever the flip changed what it records about the shards (see _record_changed);
  * `vindex sql` over the lake (for vindex.json damage): the original numbers or one `error:` line.

Kinds of damage (the random ones drawn from the case's seeded generator, the draw printed):
  flip / flips   1 or 2-8 random bits anywhere in the file (size unchanged)
  flip-mtime     one bit, then the file's mtime set back (only its ctime tells)
  footer         one bit in the last 64 bytes (Parquet footer, its length, the magic)
  zero           a random range overwritten with zeros
  truncate       cut to a random length (0 included)
  extend         random bytes appended
  swap           another layer's shard copied over it (valid Parquet, another size)
  rewrite        the same rows rewritten with every float nudged by one ulp (valid Parquet)
  moved          a shard copied into another layer's folder and the manifest updated to list it
                 there (its own `layer` column disagrees with the folder)
and of vindex.json: random bit flips, truncation, deep nesting, a file listed twice, n_layers below
the top stored layer, a listed shard of another table (size and sha256 updated to match), a listed
file deleted, vindex.json replaced by a directory, a table's vector_width removed or changed, its
vector_dtype changed, a partition key renamed, a file's row count changed.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import fault_harness as fh

GROUP = "corrupt shards and vindex.json"
TABLES = ("prompts", "activations", "pooled", "features", "ov_gate", "layer_stats")
LAYERED = ("activations", "pooled", "features", "ov_gate")
N_FLIPS = fh.count("corrupt_flips")     # random single-bit flips per table
N_EACH = fh.count("corrupt_each")       # cases of every other kind, per table
N_JSON = fh.count("corrupt_json")       # random bit flips of vindex.json
# the analyses that read each table: (label, SQL)
ANALYSES = {
    "pooled": [("cka_matrix", "SELECT * FROM cka_matrix('a', 'b')"),
               ("mutual_knn_matrix", "SELECT * FROM mutual_knn_matrix('a', 'b', k := 3)")],
    "prompts": [("cka_matrix", "SELECT * FROM cka_matrix('a', 'b')")],
    "activations": [("cka_token_matrix", "SELECT * FROM cka_token_matrix('a', 'b', batch_size := 4)")],
    "features": [("kmeans", "SELECT * FROM kmeans('a', layer := 1, k := 2)")],
}
ALL_ANALYSES = [q for t in ("pooled", "activations", "features") for q in ANALYSES[t]]
CLI_SQL = ("SELECT model, count(*) AS n, sum(list_sum(act::FLOAT[])) AS s FROM pooled GROUP BY ALL ORDER BY ALL")

SHARD_KINDS = ["flip", "flips", "flip-mtime", "footer", "zero", "truncate", "extend", "swap", "rewrite", "moved"]
JSON_KINDS = ["json-truncate", "json-deep", "json-duplicate", "json-n-layers", "json-other-table",
              "json-missing-file", "json-directory", "json-no-vector-width", "json-vector-width",
              "json-vector-dtype", "json-partition-key", "json-rows"]


def _cases():
    out = [(t, "flip", i) for t in TABLES for i in range(N_FLIPS)]
    out += [(t, k, i) for t in TABLES for k in SHARD_KINDS[1:] for i in range(N_EACH)
            if not (k in ("moved", "swap") and t not in LAYERED)]
    out += [("vindex.json", "json-flip", i) for i in range(N_JSON)]
    out += [("vindex.json", k, 0) for k in JSON_KINDS]
    return out


def _arrow(rel):
    r = rel.arrow()
    return r.read_all() if hasattr(r, "read_all") else r


class Lake:
    """The pristine lake's answers, and the working copy that cases damage."""

    def __init__(self, root: Path):
        from vindex import Vindex
        from vindex.query import connect
        self.root, self.a = root, root / "a"
        con = connect(root)
        self.sql = {t: _arrow(con.sql(f"SELECT * FROM {t}")) for t in TABLES}
        self.analyses = {label: _arrow(con.sql(q)) for label, q in ALL_ANALYSES}
        again = connect(root)
        for label, q in ALL_ANALYSES:        # exact comparison needs deterministic answers
            assert _arrow(again.sql(q)).equals(self.analyses[label]), label
        self.read = {t: Vindex.open(self.a).read(t) for t in TABLES}
        self.manifest = json.loads((self.a / "vindex.json").read_text())
        from vindex.cli import main
        r = CliRunner().invoke(main, ["sql", "-l", str(root), CLI_SQL, "--format", "csv"])
        assert r.exit_code == 0, r.output
        self.cli_sql = r.output

    def entries(self, table):
        return self.manifest["tables"][table]["files"]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    from toy_lakes import Features, ToyLake, ToyModel, write_toy_lake
    spec = ToyLake(models=(ToyModel("a", 3, 8, seed=1), ToyModel("b", 3, 8, seed=2)), dtype="float32",
                   n_prompts=8, tokens=2, latent_rank=2, ov_gate=True, layer_stats=True,
                   features=Features(tokens=tuple(f"t{i}" for i in range(12)), groups=("x", "y") * 6))
    root = write_toy_lake(tmp_path_factory.mktemp("corrupt") / "lake", spec)
    return Lake(root)


class Touched:
    """Remembers every file a case changes or creates, and puts them back."""

    def __init__(self):
        self.saved: dict[Path, bytes | None] = {}

    def keep(self, path: Path) -> Path:
        if path not in self.saved:
            self.saved[path] = path.read_bytes() if path.is_file() else None
        return path

    def restore(self):
        for path, data in self.saved.items():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)


# -- the damage ----------------------------------------------------------------------------------

def _flip_bits(data: bytes, rnd, n: int, lo: int = 0) -> tuple[bytes, str]:
    b = bytearray(data)
    done = []
    for _ in range(n):
        pos, bit = rnd.randrange(lo, len(b)), rnd.randrange(8)
        b[pos] ^= 1 << bit
        done.append(f"byte {pos} bit {bit}")
    return bytes(b), ", ".join(done)


def _nudged(table: pa.Table) -> pa.Table:
    """Every float (and float vector) one ulp up: valid Parquet of the same shape, other numbers."""
    cols = []
    for col in table.columns:
        typ = col.type
        if pa.types.is_floating(typ):
            arr = col.to_numpy()
            col = pa.array(np.nextafter(arr, np.inf).astype(arr.dtype), type=typ)
        elif (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ)) and pa.types.is_floating(typ.value_type):
            chunks = []
            for ch in col.chunks:
                vals = ch.values.to_numpy()
                vals = pa.array(np.nextafter(vals, np.inf).astype(vals.dtype), type=typ.value_type)
                chunks.append(pa.FixedSizeListArray.from_arrays(vals, typ.list_size)
                              if pa.types.is_fixed_size_list(typ) else pa.ListArray.from_arrays(ch.offsets, vals))
            col = pa.chunked_array(chunks, type=typ)
        cols.append(col)
    return pa.table(cols, schema=table.schema)


def damage_shard(lake: Lake, touched: Touched, table: str, kind: str, rnd) -> str:
    entries = lake.entries(table)
    e = entries[rnd.randrange(len(entries))]
    path = touched.keep(lake.a / e["path"])
    data = path.read_bytes()
    where = f"{table} {e['path']}"
    if kind in ("flip", "flips", "flip-mtime"):
        st = path.stat()
        new, what = _flip_bits(data, rnd, 1 if kind != "flips" else rnd.randint(2, 8))
        path.write_bytes(new)
        if kind == "flip-mtime":
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        return f"{where}: flipped {what}" + (" (mtime set back)" if kind == "flip-mtime" else "")
    if kind == "footer":
        new, what = _flip_bits(data, rnd, 1, lo=max(0, len(data) - 64))
        path.write_bytes(new)
        return f"{where}: flipped {what} (footer)"
    if kind == "zero":
        a = rnd.randrange(len(data))
        b = min(len(data), a + rnd.randint(1, 256))
        path.write_bytes(data[:a] + bytes(b - a) + data[b:])
        return f"{where}: zeroed bytes {a}..{b}"
    if kind == "truncate":
        n = rnd.randrange(len(data))
        path.write_bytes(data[:n])
        return f"{where}: truncated to {n} of {len(data)} bytes"
    if kind == "extend":
        n = rnd.randint(1, 64)
        path.write_bytes(data + rnd.randbytes(n))
        return f"{where}: {n} random bytes appended"
    if kind == "swap":
        others = [x for x in entries if x["path"] != e["path"]]
        o = others[rnd.randrange(len(others))]
        path.write_bytes((lake.a / o["path"]).read_bytes())
        return f"{where}: overwritten with {o['path']}"
    if kind == "rewrite":
        t = pq.read_table(path)
        pq.write_table(_nudged(t), path)
        return f"{where}: rewritten as valid Parquet, every float one ulp up"
    if kind == "moved":
        others = [x for x in entries if x["partition"].get("layer") != e["partition"].get("layer")]
        o = others[rnd.randrange(len(others))]
        dest = touched.keep(lake.a / Path(o["path"]).parent / "part-00099.parquet")
        shutil.copyfile(path, dest)
        m = json.loads(touched.keep(lake.a / "vindex.json").read_text())
        for x in m["tables"][table]["files"]:
            if x["path"] == o["path"]:
                x.update(path=dest.relative_to(lake.a).as_posix(), rows=e["rows"], bytes=e["bytes"],
                         sha256=e["sha256"])
        (lake.a / "vindex.json").write_text(json.dumps(m, indent=1))
        return f"{where}: copied to {dest.relative_to(lake.a)} and listed there in place of {o['path']}"
    raise ValueError(kind)


def damage_manifest(lake: Lake, touched: Touched, kind: str, rnd) -> str:
    mpath = touched.keep(lake.a / "vindex.json")
    data = mpath.read_bytes()
    m = json.loads(data)
    if kind == "json-flip":
        new, what = _flip_bits(data, rnd, 1)
        pos = int(what.split()[1])
        mpath.write_bytes(new)
        return f"vindex.json: flipped {what} ({data[pos - 16:pos + 8]!r} -> {new[pos - 16:pos + 8]!r})"
    if kind == "json-truncate":
        n = rnd.randrange(len(data))
        mpath.write_bytes(data[:n])
        return f"vindex.json: truncated to {n} of {len(data)} bytes"
    if kind == "json-deep":
        mpath.write_text(json.dumps(m)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
        return "vindex.json: a value nested 100,000 deep"
    if kind == "json-duplicate":
        files = m["tables"]["pooled"]["files"]
        files.append(dict(files[rnd.randrange(len(files))]))
        mpath.write_text(json.dumps(m))
        return f"vindex.json: pooled lists {files[-1]['path']} twice"
    if kind == "json-n-layers":
        m["model"]["n_layers"] -= 1
        mpath.write_text(json.dumps(m))
        n = m["model"]["n_layers"]
        return f"vindex.json: n_layers lowered to {n} (layer {n + 1} is stored)"
    if kind == "json-other-table":
        act = m["tables"]["activations"]["files"][0]
        m["tables"]["pooled"]["files"][0].update({k: act[k] for k in ("path", "rows", "bytes", "sha256")})
        mpath.write_text(json.dumps(m))
        return f"vindex.json: pooled's first entry points at the activations shard {act['path']}"
    if kind == "json-no-vector-width":
        del m["tables"]["pooled"]["vector_width"]
        mpath.write_text(json.dumps(m))
        return "vindex.json: pooled's vector_width removed"
    if kind == "json-vector-width":
        m["tables"]["pooled"]["vector_width"] += 1
        mpath.write_text(json.dumps(m))
        return f"vindex.json: pooled's vector_width raised to {m['tables']['pooled']['vector_width']}"
    if kind == "json-vector-dtype":
        t = m["tables"]["pooled"]
        t["vector_dtype"] = "float16" if t.get("vector_dtype") == "float32" else "float32"
        mpath.write_text(json.dumps(m))
        return f"vindex.json: pooled's vector_dtype changed to {t['vector_dtype']}"
    if kind == "json-partition-key":
        e = m["tables"]["pooled"]["files"][rnd.randrange(len(m["tables"]["pooled"]["files"]))]
        e["partition"] = {"lAyer": e["partition"]["layer"]}
        mpath.write_text(json.dumps(m))
        return f"vindex.json: the partition key of {e['path']} renamed 'layer' -> 'lAyer'"
    if kind == "json-rows":
        e = m["tables"]["pooled"]["files"][rnd.randrange(len(m["tables"]["pooled"]["files"]))]
        e["rows"] += 1
        mpath.write_text(json.dumps(m))
        return f"vindex.json: {e['path']} recorded with {e['rows']} rows (one more than it holds)"
    if kind == "json-missing-file":
        e = lake.entries("pooled")[rnd.randrange(len(lake.entries("pooled")))]
        touched.keep(lake.a / e["path"]).unlink()
        return f"vindex.json lists {e['path']}, which was deleted"
    if kind == "json-directory":
        mpath.unlink()
        mpath.mkdir()
        return "vindex.json replaced by a directory"
    raise ValueError(kind)


# -- the probes -------------------------------------------------------------------------------------

def _probes(v: fh.Verdict, lake: Lake, tables, analyses, changed: bool) -> None:
    from vindex import Vindex, verify
    from vindex.query import connect
    con = None
    try:
        con = connect(lake.root)
        v.note(fh.HANDLED, "connect: ok")
    except Exception as e:  # noqa: BLE001
        v.error("connect", e)
    if con is not None:
        for t in tables:
            v.probe(f"SQL {t}", lambda t=t: _arrow(con.sql(f"SELECT * FROM {t}")), lake.sql[t])
        for label, q in analyses:
            v.probe(label, lambda q=q: _arrow(con.sql(q)), lake.analyses[label])
    for t in tables:
        v.probe(f"Vindex.read {t}", lambda t=t: Vindex.open(lake.a).read(t), lake.read[t])

    def verdict_of_verify(problems):
        if changed:
            return bool(problems), (f"verify reports {len(problems)} problem(s): {problems[0]}" if problems
                                    else "verify says the vindex is sound, but what the manifest records changed")
        return True, "verify: sound" if not problems else f"verify: {problems[0]}"
    v.probe("verify", lambda: verify(lake.a), compare=verdict_of_verify)
    _cli_probes(v, lake, changed, sql=len(tables) > 1)


def _cli_probes(v: fh.Verdict, lake: Lake, changed: bool, sql: bool) -> None:
    """`vindex verify` must exit 1 on changed bytes (0 otherwise) and print no traceback; with `sql`,
    `vindex sql` must print the original numbers or one `error:` line."""
    from vindex.cli import main
    r = CliRunner().invoke(main, ["verify", str(lake.a)])
    if "Traceback" in r.output or (r.exception is not None and not isinstance(r.exception, SystemExit)):
        v.note(fh.BARE, f"vindex verify: {fh.describe(r.exception) if r.exception else r.output[-400:]}")
    elif (changed and r.exit_code != 1) or r.exit_code not in (0, 1):
        v.note(fh.SILENT_WRONG, f"vindex verify: exit {r.exit_code} on {'changed' if changed else 'intact'} bytes")
    else:
        v.note(fh.HANDLED, f"vindex verify: exit {r.exit_code}")
    if sql:
        r = CliRunner().invoke(main, ["sql", "-l", str(lake.root), CLI_SQL, "--format", "csv"])
        if r.exit_code == 0 and r.exception is None:
            v.note(fh.HANDLED if r.output == lake.cli_sql else fh.SILENT_WRONG,
                   "vindex sql: " + ("the original numbers" if r.output == lake.cli_sql else
                                     f"{r.output.strip()!r} where the original was {lake.cli_sql.strip()!r}"))
        else:
            v.cli("vindex sql", r)


def _record_changed(lake: Lake, touched: Touched) -> bool:
    """Whether a bit flip in vindex.json changed what it records about the shards (its `tables`: the
    files' paths, rows, bytes, sha256, partitions, vector widths), or made it unreadable: then verify
    must report a problem. A flip elsewhere (a prompt set's sha256, a model field) changes no record
    verify can check the shards against: then "sound" is a right answer too."""
    try:
        new = json.loads((lake.a / "vindex.json").read_bytes())
    except ValueError:
        return True
    return not isinstance(new, dict) or new.get("tables") != lake.manifest["tables"]


@pytest.mark.parametrize("table, kind, i", _cases(), ids=lambda x: str(x))
def test_damage_gives_the_original_numbers_or_a_named_error(verdict, lake, table, kind, i):
    rnd = fh.rng("corrupt", table, kind, i)
    touched = Touched()
    try:
        if table == "vindex.json":
            what = damage_manifest(lake, touched, kind, rnd)
            tables, analyses = TABLES, ALL_ANALYSES
        else:
            what = damage_shard(lake, touched, table, kind, rnd)
            tables, analyses = [table], ANALYSES.get(table, [])
        verdict.injected(what)
        changed = _record_changed(lake, touched) if kind == "json-flip" else any(
            (p.read_bytes() if p.is_file() else None) != data for p, data in touched.saved.items())
        _probes(verdict, lake, tables, analyses, changed)
    finally:
        touched.restore()
    verdict.done()
