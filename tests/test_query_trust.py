"""The query path reads only verified bytes (issue 14, defects 1 and 3).

A shard enters a query (connect's views, the SQL functions, cka_matrix, lake_cka, Vindex.read) only
once its size, sha256 and partition columns match its manifest entry; a bad one is a named error,
never a different number. The check is remembered per file version, so a warm query does not
rehash. Hub shards are fetched whole and checked before DuckDB opens them. Paths with glob
characters, spaces or non-ASCII letters are read exactly.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

import vindex.verified as V
from toy_lakes import ToyModel, write_toy_lake, write_toy_vindex
from vindex import ChecksumError, CorruptShard, Vindex
from vindex.files import sha256_file
from vindex.query import cka_matrix, connect

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # inside huggingface_hub

SHARD = "data/pooled/layer=2/part-00000.parquet"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A memo and shard cache of this test's own; files count as settled 0.05 s after a write."""
    monkeypatch.setenv("VINDEX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(V, "RACY_SECONDS", 0.05)
    V.forget()
    yield
    V.forget()


@pytest.fixture
def lake(tmp_path):
    root = write_toy_lake(tmp_path / "lake", models=(ToyModel("a", 4, 16, seed=1), ToyModel("b", 4, 16, seed=2)),
                          n_prompts=24, latent_rank=3)
    time.sleep(0.1)       # settled: the memo remembers what the first connect hashes
    return root


@pytest.fixture
def hash_calls(monkeypatch):
    calls = []
    real = V.digest_file

    def counting(f):
        calls.append(getattr(f, "name", f))
        return real(f)

    monkeypatch.setattr(V, "digest_file", counting)
    return calls


def _manifest(root: Path) -> dict:
    return json.loads((root / "vindex.json").read_text())


def _save(root: Path, m: dict) -> None:
    (root / "vindex.json").write_text(json.dumps(m))


def _flip(f: Path, rng) -> None:
    """One random bit of `f` flipped, the size and the mtime kept."""
    st = f.stat()
    b = bytearray(f.read_bytes())
    b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
    f.write_bytes(bytes(b))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


# -- defect 1: bytes that do not match the manifest never enter a query ---------------------------------
def test_bit_flips_in_a_pooled_shard_are_named_never_a_number(lake):
    want = cka_matrix(lake, "a", "b").to_pydict()          # also fills the memo
    f = lake / "a" / SHARD
    original = f.read_bytes()
    rng = np.random.default_rng(14)
    for _ in range(12):
        _flip(f, rng)
        with pytest.raises(ChecksumError, match=r"a/data/pooled/layer=2/part-00000\.parquet: sha256 .*vindex verify"):
            cka_matrix(lake, "a", "b")
        f.write_bytes(original)
    assert cka_matrix(lake, "a", "b").to_pydict() == want


def test_a_flip_after_a_warm_connect_is_caught_by_the_next(lake):
    connect(lake, functions=False)
    connect(lake, functions=False)       # warm: from the memo
    _flip(lake / "b" / SHARD, np.random.default_rng(0))
    with pytest.raises(ChecksumError, match="layer=2"):
        connect(lake, functions=False)


def test_a_rewritten_shard_of_another_size_is_named(lake):
    f = lake / "a" / SHARD
    f.write_bytes(f.read_bytes() + b"\0" * 16)
    with pytest.raises(CorruptShard, match=r"layer=2/part-00000\.parquet: \d+ bytes on disk.*vindex verify"):
        cka_matrix(lake, "a", "b")
    with pytest.raises(CorruptShard, match="bytes on disk"):
        Vindex.open(lake / "a").read("pooled", layers=[2])


def test_a_shard_moved_to_another_layers_folder_is_not_read_as_that_layer(lake):
    """Layer 3's file copied over layer 2's, the manifest updated to match (path, bytes, sha256):
    DuckDB would take layer 2 from the folder name; the file's own column says 3."""
    root = lake / "a"
    m = _manifest(root)
    entries = {e["path"]: e for e in m["tables"]["pooled"]["files"]}
    src, dst = root / "data/pooled/layer=3/part-00000.parquet", root / SHARD
    shutil.copyfile(src, dst)
    entries[SHARD].update(bytes=dst.stat().st_size, sha256=sha256_file(dst))
    _save(root, m)
    with pytest.raises(CorruptShard, match=r"layer=2/part-00000\.parquet: its column 'layer' holds 3, but its path "
                                           r"says layer=2.*vindex verify"):
        connect(lake)
    with pytest.raises(CorruptShard, match="column 'layer' holds 3"):
        Vindex.open(root).read("pooled", layers=[2])


def test_every_table_flipped_or_truncated_is_named(tmp_path):
    """A bit flip (same size) or a truncation of any table's shard stops connect, naming the file."""
    from toy_lakes import VIEW

    lake = write_toy_lake(tmp_path / "lake", VIEW)
    write_toy_vindex(lake / "tokens", name="tokens")          # activations too
    shards = [(root, e["path"]) for root in sorted(p for p in lake.iterdir() if p.is_dir())
              for t in _manifest(root)["tables"].values() for e in t["files"][:1]]
    tables = {rel.split("/")[1] for _, rel in shards}
    assert tables == {"prompts", "pooled", "activations", "features", "ov_gate", "layer_stats"}
    want = connect(lake, functions=False).sql("SELECT count(*) FROM files").fetchone()
    rng = np.random.default_rng(7)
    for root, rel in shards:
        f = root / rel
        original = f.read_bytes()
        _flip(f, rng)
        with pytest.raises(ChecksumError, match=f"{rel}: sha256"):
            connect(lake, functions=False)
        f.write_bytes(original[: len(original) // 2])
        with pytest.raises(CorruptShard, match=f"{rel}: {len(original) // 2} bytes on disk"):
            connect(lake, functions=False)
        f.write_bytes(original)
    assert connect(lake, functions=False).sql("SELECT count(*) FROM files").fetchone() == want


def test_lake_cka_reads_only_verified_shards(lake):
    from vindex.query.lake_cka import cka_all

    want = cka_all(lake, progress=False).to_pydict()
    _flip(lake / "b" / SHARD, np.random.default_rng(3))
    with pytest.raises(ChecksumError, match="b/data/pooled/layer=2"):
        cka_all(lake, progress=False)
    assert want["cka"]


def test_a_warm_query_does_not_rehash(lake, hash_calls):
    n_files = sum(len(t["files"]) for r in ("a", "b") for t in _manifest(lake / r)["tables"].values())
    connect(lake, functions=False)
    assert len(hash_calls) == n_files
    hash_calls.clear()
    con = connect(lake, functions=False)
    con.sql("SELECT count(*) FROM pooled").fetchall()
    assert hash_calls == []
    # one file rewritten (same bytes: a new ctime): that one is hashed again, and only that one
    f = lake / "a" / SHARD
    f.write_bytes(f.read_bytes())
    time.sleep(0.1)
    connect(lake, functions=False)
    assert [Path(p).name for p in hash_calls] == [f.name] and str(f) in hash_calls[0]


def test_the_memo_outlives_the_process(lake, tmp_path):
    connect(lake, functions=False)          # hashed here, remembered in $VINDEX_CACHE/verified
    code = ("import vindex.verified as V\n"
            "n = []\nreal = V.digest_file\n"
            "V.digest_file = lambda f: n.append(1) or real(f)\n"
            "from vindex.query import connect\n"
            f"connect({str(lake)!r}, functions=False)\n"
            "print(len(n))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "VINDEX_CACHE": os.environ["VINDEX_CACHE"]})
    assert out.stdout.strip() == "0"


def test_a_fresh_file_is_not_remembered(lake, hash_calls, monkeypatch):
    """Two writes within one timestamp tick could leave the same ctime: a file changed less than
    RACY_SECONDS before it was hashed is hashed again next time."""
    monkeypatch.setattr(V, "RACY_SECONDS", 3600.0)
    connect(lake, functions=False)
    n = len(hash_calls)
    connect(lake, functions=False)
    assert len(hash_calls) == 2 * n


def test_a_damaged_memo_costs_only_a_rehash(lake, hash_calls):
    connect(lake, functions=False)
    for f in (Path(os.environ["VINDEX_CACHE"]) / "verified").glob("*.json"):
        f.write_text('{"version": 1, "root": 5, "files": [[[[')
    V.forget()
    hash_calls.clear()
    connect(lake, functions=False)
    assert len(hash_calls) > 0


def test_a_memo_never_vouches_for_other_bytes(lake):
    """A memo entry names the file version it saw (size, mtime, inode, device, ctime): a forged
    entry for other bytes, or one for a replaced file, does not match the file there now."""
    connect(lake, functions=False)
    f = lake / "a" / SHARD
    replacement = f.with_name("other")
    b = bytearray(f.read_bytes())
    b[100] ^= 1
    replacement.write_bytes(bytes(b))
    os.replace(replacement, f)        # a new inode at the same path
    with pytest.raises(ChecksumError):
        connect(lake, functions=False)


# -- the Hub in place ----------------------------------------------------------------------------------
REPO = "vindex-org/toy"
URI = f"hf://datasets/{REPO}"


@pytest.fixture
def remote(hub_server, tmp_path):
    from vindex.hub import publish

    root = write_toy_vindex(tmp_path / "toy", n_prompts=32, d=16)
    publish(root, REPO, progress=False)
    return root


def _same_size_tamper(hub_server, path: str) -> bytes:
    data = bytearray(hub_server.read_file(REPO, path))
    data[len(data) // 2] ^= 0x10
    hub_server.tamper(REPO, path, bytes(data))
    return bytes(data)


def test_hub_shard_tampered_same_size_is_named_and_never_kept(hub_server, remote):
    _same_size_tamper(hub_server, SHARD)
    con = connect(URI)
    assert con.sql("SELECT count(*) FROM pooled WHERE layer = 1").fetchone()[0] == 32
    with pytest.raises(duckdb.Error, match=r"ChecksumError: hf://datasets/vindex-org/toy@\w+/data/pooled/layer=2/"
                                           r"part-00000\.parquet: sha256 .* does not match"):
        con.sql("SELECT act FROM pooled WHERE layer = 2").fetchall()
    e = next(e for e in _manifest(remote)["tables"]["pooled"]["files"] if e["path"] == SHARD)
    assert not list(V.shard_cache().rglob(f"{e['sha256']}*"))      # nothing of it was kept
    hub_server.clear_faults()
    rows = con.sql("SELECT prompt_id, act FROM pooled WHERE layer = 2 ORDER BY prompt_id").fetchall()
    want = Vindex.open(remote).read("pooled", layers=[2]).to_pydict()
    np.testing.assert_array_equal(np.array([r[1] for r in rows]), np.array(want["act"], dtype=np.float32))


def test_hub_first_shard_tampered_fails_connect_with_a_named_error(hub_server, remote):
    _same_size_tamper(hub_server, "data/pooled/layer=0/part-00000.parquet")
    with pytest.raises(ChecksumError, match=r"layer=0/part-00000\.parquet: sha256 .* does not match"):
        connect(URI)


def test_hub_lake_cka_checks_what_it_fetches(hub_server, remote):
    from vindex.query.lake_cka import cka_all

    other = write_toy_vindex(remote.parent / "other", name="other", n_prompts=32, d=16, seed=7)
    _same_size_tamper(hub_server, SHARD)
    with pytest.raises(ChecksumError, match=r"layer=2/part-00000\.parquet: sha256"):
        cka_all(URI, other, progress=False)


def test_hub_cached_copy_damaged_locally_is_fetched_again(hub_server, remote):
    con = connect(URI)
    want = con.sql("SELECT sum(list_sum(act)) FROM pooled WHERE layer = 2").fetchone()[0]
    e = next(e for e in _manifest(remote)["tables"]["pooled"]["files"] if e["path"] == SHARD)
    [copy] = V.shard_cache().rglob(f"{e['sha256']}.parquet")
    time.sleep(0.05)
    _flip(copy, np.random.default_rng(1))
    assert connect(URI).sql("SELECT sum(list_sum(act)) FROM pooled WHERE layer = 2").fetchone()[0] == want


# -- defect 3: glob characters, spaces and letters beyond ASCII in paths ---------------------------------
def _values(con, model: str) -> list:
    return con.sql(f"SELECT layer, prompt_id, act FROM pooled WHERE model = '{model}' "
                   "ORDER BY layer, prompt_id").fetchall()


def _want(root: Path) -> list:
    t = Vindex.open(root).read("pooled").to_pydict()
    rows = sorted(zip(t["layer"], t["prompt_id"], t["act"]), key=lambda r: r[:2])
    return [(l, p, np.asarray(a, dtype=np.float32).tolist()) for l, p, a in rows]


@pytest.mark.parametrize("folders", [("exp1", "exp[1]"), ("run1", "run*"), ("a?c", "abc"),
                                     ("ünï cødé", "unicode"), ("x]y[z", "xy")])
def test_glob_characters_in_folder_names_are_read_exactly(tmp_path, folders):
    lake = tmp_path / "lake"
    for i, folder in enumerate(folders):
        write_toy_vindex(lake / folder, name=f"m{i}", n_prompts=6, d=8, seed=10 + i)
    con = connect(lake)
    for i, folder in enumerate(folders):
        got = [(l, p, list(a)) for l, p, a in _values(con, f"m{i}")]
        assert got == _want(lake / folder), folder
    n = con.sql("SELECT model, count(*) FROM pooled GROUP BY model ORDER BY model").fetchall()
    assert n == [("m0", 24), ("m1", 24)]
    # CKA of each with itself is 1: it reads its own rows, not its neighbour's
    for i in range(2):
        t = cka_matrix(con, f"m{i}", f"m{i}").to_pydict()
        same = [c for a, b, c in zip(t["layer_a"], t["layer_b"], t["cka"]) if a == b]
        assert np.allclose(same, 1.0)


def test_glob_literal():
    from vindex.query.views import glob_literal

    assert glob_literal("/l/exp[1]/run*/a?b") == "/l/exp[[]1[]]/run[*]/a[?]b"
    assert glob_literal("/plain/ünï cødé") == "/plain/ünï cødé"
