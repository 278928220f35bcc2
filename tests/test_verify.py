"""`vindex verify` catches each kind of bad input with a message naming the file."""
import json
import shutil

import pytest
from click.testing import CliRunner

import vindex
from vindex import Vindex
from vindex.cli import main
from vindex.writer import PARQUET_OPTIONS


def _manifest(root):
    return json.loads((root / "vindex.json").read_text())


def _save(root, m):
    (root / "vindex.json").write_text(json.dumps(m))


def _kinds(root):
    return [(p.kind, p.path, p.message) for p in vindex.verify(root)]


def test_sound_vindex_verifies_clean(toy_vindex):
    assert vindex.verify(toy_vindex) == []
    r = CliRunner().invoke(main, ["verify", str(toy_vindex)])
    assert r.exit_code == 0 and "ok" in r.output


def test_missing_manifest(tmp_path):
    [(kind, path, msg)] = _kinds(tmp_path)
    assert kind == "manifest" and path.endswith("vindex.json") and "no manifest" in msg


def test_malformed_manifest(toy_vindex):
    (toy_vindex / "vindex.json").write_text("{not json")
    [(kind, _, msg)] = _kinds(toy_vindex)
    assert kind == "manifest" and "not valid JSON" in msg
    with pytest.raises(vindex.ManifestError, match="vindex.json"):
        Vindex.open(toy_vindex)


def test_manifest_missing_required_field(toy_vindex):
    m = _manifest(toy_vindex)
    del m["model"]["n_layers"]
    _save(toy_vindex, m)
    [(kind, _, msg)] = _kinds(toy_vindex)
    assert kind == "manifest" and "n_layers" in msg


def test_unknown_schema_version(toy_vindex):
    m = _manifest(toy_vindex)
    m["schema_version"] = 99
    _save(toy_vindex, m)
    with pytest.raises(vindex.UnsupportedSchemaVersion, match="schema_version 99"):
        Vindex.open(toy_vindex)
    assert _kinds(toy_vindex)[0][0] == "manifest"


@pytest.mark.parametrize("bad", ["../outside.parquet", "/etc/passwd", "data/../../x.parquet", "data\\..\\x.parquet"])
def test_path_escaping_the_vindex(toy_vindex, bad):
    m = _manifest(toy_vindex)
    m["tables"]["pooled"]["files"][0]["path"] = bad
    _save(toy_vindex, m)
    with pytest.raises(vindex.UnsafePath, match="escapes"):
        Vindex.open(toy_vindex)
    [(kind, _, msg)] = _kinds(toy_vindex)
    assert kind == "unsafe-path" and repr(bad) in msg


def test_listed_shard_absent(toy_vindex):
    (toy_vindex / "data/pooled/layer=1/part-00000.parquet").unlink()
    [(kind, path, _)] = _kinds(toy_vindex)
    assert kind == "missing" and path.endswith("layer=1/part-00000.parquet")


def test_checksum_mismatch_same_size(toy_vindex):
    f = toy_vindex / "data/pooled/layer=2/part-00000.parquet"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    [(kind, path, msg)] = _kinds(toy_vindex)
    assert kind == "checksum" and path.endswith("layer=2/part-00000.parquet") and "sha256" in msg


def test_truncated_parquet(toy_vindex):
    f = toy_vindex / "data/activations/layer=0/part-00000.parquet"
    f.write_bytes(f.read_bytes()[:100])
    [(kind, path, msg)] = _kinds(toy_vindex)
    assert kind == "size" and "truncated" in msg
    with pytest.raises(vindex.CorruptShard, match="part-00000.parquet"):
        Vindex.open(toy_vindex).read("activations", layers=[0])


def test_truncated_parquet_with_matching_manifest_is_corrupt_not_a_traceback(toy_vindex):
    f = toy_vindex / "data/activations/layer=0/part-00000.parquet"
    f.write_bytes(f.read_bytes()[:100])
    m = _manifest(toy_vindex)
    e = next(e for e in m["tables"]["activations"]["files"] if e["path"].endswith("layer=0/part-00000.parquet"))
    e["bytes"] = 100
    e["sha256"] = vindex.files.sha256_file(f)
    _save(toy_vindex, m)
    [(kind, _, msg)] = _kinds(toy_vindex)
    assert kind == "corrupt" and "Parquet" in msg
    with pytest.raises(vindex.CorruptShard, match="not a readable Parquet"):
        Vindex.open(toy_vindex).read("activations", layers=[0])


def test_wrong_vector_width(toy_vindex, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    f = toy_vindex / "data/pooled/layer=3/part-00000.parquet"
    t = pq.read_table(f)
    narrow = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(t.num_rows * 4, dtype=np.float16)), 4)
    t = t.set_column(t.schema.get_field_index("act"), pa.field("act", narrow.type, nullable=False), narrow)
    pq.write_table(t, f, **PARQUET_OPTIONS)
    m = _manifest(toy_vindex)
    e = next(e for e in m["tables"]["pooled"]["files"] if "layer=3" in e["path"])
    e["bytes"], e["sha256"] = f.stat().st_size, vindex.files.sha256_file(f)
    _save(toy_vindex, m)
    [(kind, _, msg)] = _kinds(toy_vindex)
    assert kind == "schema" and "vector width 4" in msg and "manifest says 8" in msg


def test_row_count_mismatch(toy_vindex):
    m = _manifest(toy_vindex)
    m["tables"]["pooled"]["files"][0]["rows"] += 1
    _save(toy_vindex, m)
    [(kind, _, msg)] = _kinds(toy_vindex)
    assert kind == "rows"


def test_orphan_shard_reported(toy_vindex):
    shutil.copy(toy_vindex / "data/pooled/layer=0/part-00000.parquet",
                toy_vindex / "data/pooled/layer=0/part-00001.parquet")
    [(kind, _, _)] = _kinds(toy_vindex)
    assert kind == "orphan"


def test_cli_verify_exits_nonzero_with_a_message_per_problem(toy_vindex):
    (toy_vindex / "data/pooled/layer=1/part-00000.parquet").unlink()
    (toy_vindex / "data/pooled/layer=2/part-00000.parquet").write_bytes(b"junk")
    r = CliRunner().invoke(main, ["verify", str(toy_vindex)])
    assert r.exit_code == 1
    assert "layer=1/part-00000.parquet: [missing]" in r.output
    assert "layer=2/part-00000.parquet: [size]" in r.output
    assert "2 problem(s)" in r.output


def test_cli_info(toy_vindex):
    r = CliRunner().invoke(main, ["info", str(toy_vindex)])
    assert r.exit_code == 0, r.output
    assert "toy" in r.output and "activations" in r.output and "float16[8]" in r.output
    r = CliRunner().invoke(main, ["info", str(toy_vindex), "--json"])
    assert json.loads(r.output)["tables"]["pooled"]["rows"] == 24
    r = CliRunner().invoke(main, ["info", str(toy_vindex / "nope")])
    assert r.exit_code == 1 and "error:" in r.output and "no manifest" in r.output
