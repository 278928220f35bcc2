"""Bad input and a full disk end in a named error (one line from the CLI, exit 1), never a traceback,
a silently skipped file or a wrong number:

  * disk full (ENOSPC) during build and weights, injected and on a real tmpfs: the manifest stays
    valid and a rerun, once there is space, resumes to the same shards as an uninterrupted build;
  * JSON nested too deeply (vindex.json, LarQL index.json and NDJSON, prompts, study caches);
  * a prompt file that is not UTF-8 (named with the byte offset and line);
  * a model folder holding only a pickle checkpoint (never torch.load-ed);
  * verify's blind spots: a file listed twice, NaN/Inf in vectors, n_layers below a stored layer, a
    shard of another table (which `Vindex.read` refuses too);
  * a lake's vindex.json that is not a regular file; `vindex view --serve` and a foreign Host header;
  * a corrupt LarQL ov-gate NDJSON.
"""
from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import vindex
from ingest_fixtures import make_tiny_model, tiny_config, tiny_tokenizer, write_prompts
from larql_fixtures import write_larql_fixture
from toy_lakes import Features, ToyModel, write_toy_lake, write_toy_vindex
from vindex import Vindex, integrity
from vindex.cli import main
from vindex.cli.core import os_error_line
from vindex.errors import (InvalidValue, LarqlFormatError, ManifestError, ModelSourceError, SchemaMismatch,
                           UnsafePath)
from vindex.files import sha256_file
from vindex.ingest import build, build_weights
from vindex.ingest.prompts import load_prompts
from vindex.writer import PARQUET_OPTIONS

ARGS = {"batch_size": 2, "shard_rows": 24}      # 8 prompts -> several shard groups
DEEP = "[" * 100_000 + "]" * 100_000          # parses only with a stack 100,000 frames deep
WEIGHT_TABLES = ("features", "ov_gate", "layer_stats")


def one_line_error(result, *needles) -> str:
    """The CLI ended with exit 1 and one `error:` line holding every needle, not a traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def digest(root: Path, tables) -> dict:
    """path -> (rows, sha256) of every listed shard of `tables`."""
    m = json.loads((root / "vindex.json").read_text())
    return {e["path"]: (e["rows"], e["sha256"]) for t in tables for e in m["tables"].get(t, {}).get("files", [])}


def hidden_temp_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*.tmp"))


# -- disk full ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny llama, its prompts, and uninterrupted builds to compare resumed ones with."""
    root = tmp_path_factory.mktemp("bad-input")
    folder = make_tiny_model(root / "llama", "llama")
    prompts = write_prompts(root / "p.jsonl")
    reference = build(folder, root / "reference", prompts=prompts, progress=False, **ARGS)
    with_weights = root / "reference-weights"
    shutil.copytree(reference, with_weights)
    build_weights(folder, with_weights, progress=False)
    return folder, prompts, reference, with_weights


def build_cli(folder, prompts, out) -> list[str]:
    return ["build", str(folder), str(out), "--prompts", str(prompts), "--batch-size", str(ARGS["batch_size"]),
            "--shard-rows", str(ARGS["shard_rows"]), "--quiet"]


def disk_full_after(monkeypatch, n_writes: int) -> None:
    """Every shard write after the first `n_writes` fails as pyarrow fails on a full disk (the writer
    threads write concurrently: the count is locked)."""
    real, lock, count = pq.write_table, threading.Lock(), [0]

    def write_table(*args, **kwargs):
        with lock:
            count[0] += 1
            full = count[0] > n_writes
        if full:
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        return real(*args, **kwargs)
    monkeypatch.setattr(pq, "write_table", write_table)


def assert_valid_partial(out: Path) -> None:
    """A cut-off write leaves a manifest that opens and verifies, but for orphans a rerun overwrites."""
    Vindex.open(out)
    assert {p.kind for p in vindex.verify(out)} <= {"orphan"}
    assert hidden_temp_files(out) == []


def test_disk_full_during_build_is_one_line_and_resumes(model, tmp_path, monkeypatch):
    folder, prompts, reference, _ = model
    out = tmp_path / "vx"
    disk_full_after(monkeypatch, 12)       # the prompts shard, then part of the shard groups
    r = CliRunner().invoke(main, build_cli(folder, prompts, out))
    one_line_error(r, "build: No space left on device [ENOSPC]", f"while writing {out}", "free some space",
                   "rerun the same command")
    assert_valid_partial(out)
    assert Vindex.open(out).manifest["prompt_sets"]["p"]["complete"] is False
    monkeypatch.undo()
    r = CliRunner().invoke(main, build_cli(folder, prompts, out))
    assert r.exit_code == 0, r.output
    assert vindex.verify(out) == []
    tables = ("prompts", "activations", "pooled")
    assert digest(out, tables) == digest(reference, tables)


def test_disk_full_when_the_manifest_is_written(model, tmp_path, monkeypatch):
    """fsync is where some file systems (NFS, quotas) report a full disk: shards and manifest alike."""
    folder, prompts, reference, _ = model
    out = tmp_path / "vx"
    real, count = os.fsync, [0]

    def fsync(fd):
        count[0] += 1
        if count[0] > 9:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    r = CliRunner().invoke(main, build_cli(folder, prompts, out))
    one_line_error(r, "[EDQUOT]", "raise the quota", "rerun the same command")
    monkeypatch.undo()
    assert_valid_partial(out)
    assert CliRunner().invoke(main, build_cli(folder, prompts, out)).exit_code == 0
    tables = ("prompts", "activations", "pooled")
    assert vindex.verify(out) == [] and digest(out, tables) == digest(reference, tables)


def test_disk_full_during_weights_is_one_line_and_resumes(model, tmp_path, monkeypatch):
    folder, _, reference, with_weights = model
    out = tmp_path / "vx"
    shutil.copytree(reference, out)
    disk_full_after(monkeypatch, 2)
    r = CliRunner().invoke(main, ["weights", str(folder), str(out), "--quiet"])
    one_line_error(r, "weights: No space left on device [ENOSPC]", str(out), "rerun the same command")
    assert_valid_partial(out)
    monkeypatch.undo()
    r = CliRunner().invoke(main, ["weights", str(folder), str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert vindex.verify(out) == []
    for t in WEIGHT_TABLES:
        assert Vindex.open(out).read(t).equals(Vindex.open(with_weights).read(t)), t




def test_disk_full_on_a_real_tmpfs(model, small_disk):
    folder, prompts, reference, _ = model
    mount, _, grow = small_disk
    mnt = mount(128)   # 128 KiB: too small for the tiny build
    out = mnt / "vx"
    r = CliRunner().invoke(main, build_cli(folder, prompts, out))
    one_line_error(r, "No space left on device [ENOSPC]", str(out), "rerun the same command")
    del r
    assert_valid_partial(out)
    assert len(Vindex.open(out).entries("pooled")) < len(Vindex.open(reference).entries("pooled"))
    grow()
    r = CliRunner().invoke(main, build_cli(folder, prompts, out))
    assert r.exit_code == 0, r.output
    tables = ("prompts", "activations", "pooled")
    assert vindex.verify(out) == [] and digest(out, tables) == digest(reference, tables)


@pytest.mark.parametrize("code, needles", [
    (errno.EROFS, ("Read-only file system [EROFS] while writing out/x", "write to a writable folder")),
    (errno.EACCES, ("Permission denied [EACCES] at out/x", "check the permissions")),
    (errno.ENOSPC, ("No space left on device [ENOSPC] while writing out/x", "free some space")),
])
def test_os_error_line_names_what_and_what_to_do(code, needles):
    line = os_error_line(OSError(code, "pyarrow's own words"), "build", {"out": "out/x"})
    assert all(n in line for n in needles) and "\n" not in line
    assert "rerun the same command" in line
    assert "rerun the command" in os_error_line(OSError(code, "x"), "sql", {"output": "out/x"})


def test_every_command_is_guarded():
    """Every command registered turns VindexError and OSError into one line (core.guard)."""
    assert all(getattr(cmd.callback, "vindex_guarded", False) for cmd in main.commands.values())


def test_unwritable_output_is_one_line(toy_vindex, tmp_path):
    """An OSError from a plain write (here: the output's folder is a file) gets the same one line."""
    (tmp_path / "a-file").write_text("x")
    target = tmp_path / "a-file" / "r.txt"
    r = CliRunner().invoke(main, ["sql", "-l", str(toy_vindex), "SELECT 1 AS x", "-o", str(target)])
    one_line_error(r, "sql: Not a directory [ENOTDIR] at", "r.txt", "rerun the command")


# -- JSON nested too deeply -----------------------------------------------------------------------

def test_deep_vindex_json(toy_vindex):
    (toy_vindex / "vindex.json").write_text(DEEP)
    with pytest.raises(ManifestError, match="nested too deeply"):
        Vindex.open(toy_vindex)
    [p] = vindex.verify(toy_vindex)
    assert p.kind == "manifest" and "nested too deeply" in p.message
    one_line_error(CliRunner().invoke(main, ["info", str(toy_vindex)]), "vindex.json", "nested too deeply")
    one_line_error(CliRunner().invoke(main, ["sql", "-l", str(toy_vindex), "SELECT 1"]), "nested too deeply")
    r = CliRunner().invoke(main, ["verify", str(toy_vindex)])
    assert r.exit_code == 1 and "[manifest]" in r.output and "nested too deeply" in r.output
    assert "Traceback" not in r.output


def test_deep_larql_index_json(tmp_path):
    write_larql_fixture(tmp_path / "src")
    (tmp_path / "src" / "index.json").write_text(DEEP)
    r = CliRunner().invoke(main, ["import-larql", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--quiet"])
    one_line_error(r, "index.json", "nested too deeply")


def test_deep_larql_ndjson_lines(tmp_path):
    from vindex.ingest.larql import format as lf
    from vindex.ingest.larql.labels import read_feature_clusters
    write_larql_fixture(tmp_path / "src", legacy_jsonl=True)
    p = tmp_path / "src" / "down_meta.jsonl"
    p.write_text(p.read_text().splitlines()[0] + "\n" + DEEP + "\n")
    with pytest.raises(LarqlFormatError, match=r"down_meta\.jsonl: line 2: JSON nested too deeply"):
        lf.read_down_meta_jsonl(p)
    clusters = tmp_path / "feature_clusters.jsonl"
    clusters.write_bytes(b'{"l": 0, "f": 1, "c": 2}\n{"l": "\xff"}\n')
    with pytest.raises(LarqlFormatError, match=r"feature_clusters\.jsonl: line 2: not valid JSON"):
        read_feature_clusters(clusters)


def test_deep_prompt_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"text": "fine"}\n' + DEEP + "\n")
    with pytest.raises(InvalidValue, match=r"p\.jsonl: line 2: JSON nested too deeply"):
        load_prompts(p)


def test_deep_study_cache_and_lexicon(tmp_path):
    from vindex.study.lexicon import load_lexicon
    from vindex.study.run import StageCache
    (tmp_path / "stages.json").write_text(DEEP)
    assert StageCache(tmp_path, {}, progress=False).index == {}     # a cache: computed again
    (tmp_path / "lex.json").write_text(DEEP)
    with pytest.raises(InvalidValue, match=r"lex\.json: JSON nested too deeply"):
        load_lexicon(tmp_path / "lex.json")
    (tmp_path / "lex").mkdir()
    (tmp_path / "lex" / "colours.txt").write_bytes(b"red\nbl\xe9u\n")
    with pytest.raises(InvalidValue, match=r"colours\.txt: not UTF-8 text at byte offset 6"):
        load_lexicon(tmp_path / "lex")


def test_damaged_study_stage_file_is_computed_again(tmp_path):
    from vindex.study.run import StageCache
    cache = StageCache(tmp_path, {}, progress=False)
    table = pa.table({"x": [1, 2]})
    assert cache.stage("s", {}, [], lambda: table, "s").equals(table)
    (tmp_path / "s.parquet").write_bytes(b"not parquet")
    again = StageCache(tmp_path, {}, progress=False)
    assert again.stage("s", {}, [], lambda: table, "s").equals(table)


# -- prompt files that are not UTF-8 --------------------------------------------------------------

@pytest.mark.parametrize("suffix, data, offset, line", [
    (".jsonl", b'{"text": "one"}\n{"text": "caf\xe9"}\n', 29, 2),
    (".txt", b"first\nsecond\nthi\xffrd\n", 16, 3),
    (".csv", b"text\nok\n\x80bad\n", 8, 3),
    (".tsv", b"text\tcategory\n\xc3(\tx\n", 14, 2),
])
def test_prompt_file_not_utf8(tmp_path, suffix, data, offset, line):
    p = tmp_path / f"prompts{suffix}"
    p.write_bytes(data)
    with pytest.raises(InvalidValue, match=rf"prompts\{suffix}: not UTF-8 text: byte 0x[0-9a-f]{{2}} at byte offset "
                                           rf"{offset} \(line {line}\)"):
        load_prompts(p)


def test_prompt_file_not_parquet(tmp_path):
    p = tmp_path / "p.parquet"
    p.write_bytes(b"PAR1 but no more")
    with pytest.raises(InvalidValue, match=r"p\.parquet: not a readable Parquet file of prompts"):
        load_prompts(p)


def test_build_with_a_latin1_prompt_file_is_one_line(model, tmp_path):
    folder = model[0]
    p = tmp_path / "latin1.txt"
    p.write_bytes("Wie geht's?\nGrüße aus Köln\n".encode("latin-1"))
    r = CliRunner().invoke(main, ["build", str(folder), str(tmp_path / "vx"), "--prompts", str(p), "--quiet"])
    one_line_error(r, "latin1.txt", "byte offset 14 (line 2)")


# -- pickle checkpoints ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pickle_folder(tmp_path_factory):
    """A tiny model saved the old way: pytorch_model.bin (a torch.save pickle), no safetensors."""
    import torch
    from transformers import AutoModelForCausalLM
    folder = tmp_path_factory.mktemp("pickle") / "llama"
    tok = tiny_tokenizer(encoder=False, add_bos=True)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(tok), 2))
    model.save_pretrained(folder, safe_serialization=False)   # transformers 5 writes safetensors anyway
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def no_torch_load(monkeypatch):
    import torch
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def test_pickle_only_model_folder_is_refused_with_the_reason(pickle_folder, tmp_path, no_torch_load):
    from vindex.ingest.sources import resolve_model
    with pytest.raises(ModelSourceError, match=r"pytorch_model\.bin is a pickle.*can run arbitrary code.*safetensors"):
        resolve_model(pickle_folder)
    r = CliRunner().invoke(main, ["build", str(pickle_folder), str(tmp_path / "vx"), "--quiet"])
    one_line_error(r, "pytorch_model.bin is a pickle", "run arbitrary code")
    assert no_torch_load == []


def test_pickle_next_to_an_unrelated_safetensors_is_never_loaded(pickle_folder, tmp_path, no_torch_load):
    """transformers falls back to pytorch_model.bin when model.safetensors is missing, unless told not to."""
    from vindex.ingest.sources import load_model, resolve_model
    folder = tmp_path / "decoy"
    shutil.copytree(pickle_folder, folder)
    (folder / "adapter.safetensors").write_bytes(b"")
    src = resolve_model(folder)
    with pytest.raises(ModelSourceError, match=r"no file named model\.safetensors.*pytorch_model\.bin is a pickle"):
        load_model(src, progress=False)
    assert no_torch_load == []


# -- verify's blind spots -------------------------------------------------------------------------

def _manifest(root):
    return json.loads((root / "vindex.json").read_text())


def _save(root, m):
    (root / "vindex.json").write_text(json.dumps(m))


def _kinds(root, **kw):
    return [(p.kind, p.path, p.message) for p in vindex.verify(root, **kw)]


def test_file_listed_twice_in_one_table(toy_vindex):
    m = _manifest(toy_vindex)
    m["tables"]["pooled"]["files"].append(dict(m["tables"]["pooled"]["files"][0]))
    _save(toy_vindex, m)
    [(kind, path, msg)] = _kinds(toy_vindex)
    assert kind == "duplicate" and path.endswith("layer=0/part-00000.parquet") and "count its rows twice" in msg


def test_file_listed_in_two_tables_and_under_two_spellings(toy_vindex):
    m = _manifest(toy_vindex)
    entry = m["tables"]["pooled"]["files"][1]
    m["tables"]["activations"]["files"].append(dict(entry))
    m["tables"]["pooled"]["files"].append(dict(entry, path=entry["path"].replace("data/", "data/./")))
    _save(toy_vindex, m)
    problems = _kinds(toy_vindex)
    assert sorted(k for k, _, _ in problems) == ["duplicate", "duplicate"]
    assert any("table 'pooled', then table 'activations'" in msg for _, _, msg in problems)


def _rewrite(root, relpath, table, change) -> None:
    """Apply `change` to a shard's Arrow table, rewrite it and record its new size and sha256."""
    f = root / relpath
    pq.write_table(change(pq.read_table(f)), f, **PARQUET_OPTIONS)
    m = _manifest(root)
    e = next(e for e in m["tables"][table]["files"] if e["path"] == relpath)
    e["bytes"], e["sha256"] = f.stat().st_size, sha256_file(f)
    _save(root, m)


def _poison(row: int, width: int, value: float):
    def change(t):
        col = t.column("act").combine_chunks()
        v = col.values.to_numpy(zero_copy_only=False).copy()
        v[row * width + 1] = value
        vec = pa.FixedSizeListArray.from_arrays(pa.array(v), width)
        return t.set_column(t.schema.get_field_index("act"), t.schema.field("act"), vec)
    return change


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_vectors(tmp_path, dtype, value):
    root = write_toy_vindex(tmp_path / "toy", dtype=dtype)
    rel = "data/pooled/layer=2/part-00000.parquet"
    _rewrite(root, rel, "pooled", _poison(4, 8, value))
    [(kind, path, msg)] = _kinds(root)
    assert kind == "nonfinite" and path.endswith(rel) and "column 'act': 1 row(s) hold NaN or Inf (first: row 4)" in msg
    assert _kinds(root, checksums=False) == []   # --no-checksums checks sizes, schemas and rows only


def test_nonfinite_scan_reads_a_batch_at_a_time(toy_vindex, monkeypatch):
    """The scan streams batches of SCAN_ROWS rows; a bad row past the first batch is found and numbered."""
    rel = "data/activations/layer=1/part-00000.parquet"
    rows = pq.read_metadata(toy_vindex / rel).num_rows
    _rewrite(toy_vindex, rel, "activations", _poison(rows - 2, 8, np.nan))
    monkeypatch.setattr(integrity, "SCAN_ROWS", 3)
    seen = []
    real = pq.ParquetFile.iter_batches

    def iter_batches(self, *a, **k):
        for b in real(self, *a, **k):
            seen.append(b.num_rows)
            yield b
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    [(kind, _, msg)] = _kinds(toy_vindex)
    assert kind == "nonfinite" and f"first: row {rows - 2})" in msg
    assert max(seen) <= 3 < rows


def test_n_layers_below_a_stored_layer(tmp_path):
    root = write_toy_lake(tmp_path, models=(ToyModel("w", 3, 8),), features=Features(tokens=("a", "b", "c")),
                          ov_gate=True, layer_stats=True) / "w"
    assert vindex.verify(root) == []
    m = _manifest(root)
    m["model"]["n_layers"] = 2
    _save(root, m)
    problems = _kinds(root)
    by_table = {msg.split("'")[1] for k, p, msg in problems if k == "layers" and p.endswith("vindex.json")}
    assert by_table == {"pooled", "activations", "features", "ov_gate"}
    assert any(k == "layers" and "layer_stats" in p and "column 'layer' holds layer 3" in msg
               for k, p, msg in problems)
    assert any(k == "layers" and "ov_gate" in p and "column 'feature_layer' holds layer 3" in msg
               for k, p, msg in problems)


def test_shard_of_another_table(toy_vindex):
    """A pooled shard copied into the activations folder and listed there, its bytes recorded rightly."""
    src = toy_vindex / "data/pooled/layer=1/part-00000.parquet"
    rel = "data/activations/layer=1/part-00001.parquet"
    shutil.copy(src, toy_vindex / rel)
    m = _manifest(toy_vindex)
    e = dict(next(e for e in m["tables"]["pooled"]["files"] if e["path"].startswith("data/pooled/layer=1/")))
    m["tables"]["activations"]["files"].append(dict(e, path=rel))
    _save(toy_vindex, m)
    [(kind, path, msg)] = _kinds(toy_vindex)
    assert kind == "other-table" and path.endswith(rel)
    assert "columns of table 'pooled' but is listed under table 'activations'" in msg
    with pytest.raises(SchemaMismatch, match=r"part-00001\.parquet \(table 'activations'\): missing column"):
        Vindex.open(toy_vindex).read("activations", layers=[1])


# -- lake discovery -------------------------------------------------------------------------------

@pytest.fixture
def lake(tmp_path):
    root = tmp_path / "lake"
    write_toy_vindex(root / "a", name="a")
    write_toy_vindex(root / "b", name="b", seed=1)
    return root


def _resolve(*sources):
    from vindex.query.sources import resolve_sources
    return sorted(rv.name for rv in resolve_sources(*sources))


def test_lake_vindex_json_directory(lake):
    (lake / "c" / "vindex.json").mkdir(parents=True)
    with pytest.raises(ManifestError, match=r"lake .*c/vindex\.json: is a directory, not a regular file"):
        _resolve(lake)
    with pytest.raises(ManifestError, match=r"c/vindex\.json: is a directory"):
        _resolve(lake / "c")
    one_line_error(CliRunner().invoke(main, ["sql", "-l", str(lake), "SELECT 1"]), "c/vindex.json", "directory")


def test_lake_vindex_json_fifo_is_named_not_read(lake):
    (lake / "c").mkdir()
    os.mkfifo(lake / "c" / "vindex.json")
    with pytest.raises(ManifestError, match=r"c/vindex\.json: is a FIFO"):
        _resolve(lake)


def test_lake_vindex_json_symlinks(lake, tmp_path):
    (lake / "c").mkdir()
    shutil.copy(lake / "a" / "vindex.json", tmp_path / "elsewhere.json")
    (lake / "c" / "vindex.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(UnsafePath, match=r"c/vindex\.json: a symlink to .*elsewhere\.json.*outside the vindex folder"):
        _resolve(lake)
    (lake / "c" / "vindex.json").unlink()
    (lake / "c" / "vindex.json").symlink_to(lake / "c" / "gone.json")
    with pytest.raises(ManifestError, match=r"c/vindex\.json: a symlink to .*gone\.json.*cannot be read"):
        _resolve(lake)
    shutil.rmtree(lake / "c")
    # a link inside the vindex folder is a regular file to read
    (lake / "b" / "vindex.json").rename(lake / "b" / "manifest.json")
    (lake / "b" / "vindex.json").symlink_to("manifest.json")
    assert _resolve(lake) == ["a", "b"]


# -- vindex view --serve: DNS rebinding -----------------------------------------------------------

def _get(port: int, host: str | None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest("GET", "/", skip_host=True)
        if host is not None:
            c.putheader("Host", host)
        c.endheaders()
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_serve_answers_only_to_local_host_names():
    from vindex.view.serve import serve_in_thread
    server, _ = serve_in_thread("<html>the page</html>")
    port = server.server_port
    try:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost:9999", "LOCALHOST"):
            assert _get(port, host) == (200, b"<html>the page</html>"), host
        for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.attacker.example:{port}",
                     "localhost:80:1", "caf\xe9.example"):
            status, body = _get(port, host)
            assert status == 421 and b"the page" not in body, host
        status, body = _get(port, None)
        assert status == 400 and b"the page" not in body
    finally:
        server.shutdown()
        server.server_close()


# -- LarQL ov-gate NDJSON -------------------------------------------------------------------------

@pytest.fixture
def larql(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", ov_gate=True)
    return fx.folder, fx.folder / "ov_gate_coupling.ndjson"


def _import(src, out):
    from vindex.ingest.larql import import_larql
    return import_larql(src, out, progress=False)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("corrupt, match", [
    (lambda ls: [b'{"_header": true, "type": "ov_gate_coupling", \n'] + ls[1:], r"line 1: not valid JSON"),
    (lambda ls: ls[1:], r"looks like an ov-gate NDJSON file .* line 1 is not a .* header"),
    (lambda ls: [b""], r"looks like an ov-gate NDJSON file"),
    (lambda ls: [DEEP.encode() + b"\n"] + ls[1:], r"line 1: JSON nested too deeply"),
    (lambda ls: ls[:3] + [b'{"layer": 0, "head_idx": 1\n'] + ls[4:], r"line 4: not valid JSON"),
    (lambda ls: ls[:3] + [b'{"layer": 0, "head_idx": 1, "feature_idx": "\xff"}\n'] + ls[4:], r"line 4: not valid JSON"),
    (lambda ls: ls[:3] + [b'{"layer": 0, "head_idx": 1, "feature_idx": 2}\n'] + ls[4:],
     r"line 4: not an ov-gate row"),
    (lambda ls: ls[:3] + [b'{"layer": 0, "head_idx": 1, "feature_idx": 2, "coupling": NaN, "total_coupling": 1}\n']
     + ls[4:], r"line 4: coupling nan .* not a finite number"),
])
def test_corrupt_ov_gate_file_is_named(larql, tmp_path, corrupt, match):
    src, ov = larql
    ov.write_bytes(b"".join(corrupt(_lines(ov))))
    with pytest.raises(LarqlFormatError, match=r"ov_gate_coupling\.ndjson: " + match):
        _import(src, tmp_path / "out")
    r = CliRunner().invoke(main, ["import-larql", str(src), "--out", str(tmp_path / "out2"), "--quiet"])
    one_line_error(r, "ov_gate_coupling.ndjson")


def test_ov_gate_claimed_by_its_first_line(larql, tmp_path):
    """A file named otherwise whose line 1 names the ov-gate type, cut short, is named too."""
    src, ov = larql
    ov.rename(src / "coupling.jsonl")
    (src / "coupling.jsonl").write_bytes(b'{"_header": true, "type": "ov_gate_coupling", "layers": [0\n')
    with pytest.raises(LarqlFormatError, match=r"coupling\.jsonl: line 1: not valid JSON"):
        _import(src, tmp_path / "out")


def test_files_that_are_not_ov_gate_files_are_still_ignored(larql, tmp_path):
    src, ov = larql
    (src / "notes.ndjson").write_bytes(b"\xff\xfe not json at all\n")
    (src / "other.jsonl").write_text('{"l": 0}\n')
    (src / "ov_gate_edges.jsonl").write_text(json.dumps({"_header": True, "type": "ov_gate_coupling",
                                                         "num_edges": 0}) + "\n")
    out = _import(src, tmp_path / "out")
    assert Vindex.open(out).read("ov_gate").num_rows == len(_lines(ov)) - 1
