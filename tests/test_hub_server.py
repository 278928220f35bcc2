"""The local Hub test server answers huggingface_hub and HfFileSystem like the Hub does."""
from __future__ import annotations

import pytest


def test_client_round_trip(hub_server, tmp_path):
    import huggingface_hub as hh

    api = hh.HfApi()
    assert api.whoami()["name"] == "vindex-tester"
    api.create_repo("vindex-org/rt", repo_type="dataset")
    api.create_repo("vindex-org/rt", repo_type="dataset", exist_ok=True)
    (tmp_path / "data" / "x").mkdir(parents=True)
    blob = b"\0PAR1" * 1000
    (tmp_path / "data" / "x" / "a.parquet").write_bytes(blob)
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: x\n  data_files: data/x/*.parquet\n---\nhi\n")
    first = api.upload_folder(repo_id="vindex-org/rt", repo_type="dataset", folder_path=tmp_path).oid
    # unchanged content: the client skips the commit (the server reports remote oids in preupload)
    assert api.upload_folder(repo_id="vindex-org/rt", repo_type="dataset", folder_path=tmp_path).oid == first
    files = {f.path: f for f in api.list_repo_tree("vindex-org/rt", repo_type="dataset", recursive=True)}
    assert files["data/x/a.parquet"].lfs.sha256 == __import__("hashlib").sha256(blob).hexdigest()
    assert files["README.md"].lfs is None
    path = hh.hf_hub_download("vindex-org/rt", "data/x/a.parquet", repo_type="dataset")
    assert open(path, "rb").read() == blob
    fs = hh.HfFileSystem()
    assert fs.glob("hf://datasets/vindex-org/rt/data/**/*.parquet") == ["datasets/vindex-org/rt/data/x/a.parquet"]
    with fs.open("hf://datasets/vindex-org/rt/data/x/a.parquet", "rb", block_size=16) as f:
        f.seek(4995)
        assert f.read() == blob[4995:]
    ranged = [r for r in hub_server.log if r["range"]]
    assert ranged and all(r["status"] == 206 for r in ranged)
    assert [d.id for d in api.list_datasets(author="vindex-org")] == ["vindex-org/rt"]


def test_invalid_card_metadata_is_rejected(hub_server):
    import huggingface_hub as hh

    api = hh.HfApi()
    api.create_repo("vindex-org/bad", repo_type="dataset")
    with pytest.raises(ValueError, match="configs"):
        api.upload_file(path_or_fileobj=b"---\nconfigs: 3\n---\n", path_in_repo="README.md",
                        repo_id="vindex-org/bad", repo_type="dataset")


def test_put_files_model_repo_and_faults(hub_server):
    import huggingface_hub as hh

    hub_server.put_files("vindex-org/m", {"index.json": b'{"a": 1}', "w.bin": b"\0" * 100}, repo_type="model")
    assert open(hh.hf_hub_download("vindex-org/m", "index.json"), "rb").read() == b'{"a": 1}'
    hub_server.fail("vindex-org/m", "w.bin", repo_type="model", times=10)
    with pytest.raises(Exception):
        hh.hf_hub_download("vindex-org/m", "w.bin")
    hub_server.clear_faults()
    assert open(hh.hf_hub_download("vindex-org/m", "w.bin"), "rb").read() == b"\0" * 100
    with pytest.raises(hh.errors.RepositoryNotFoundError):
        hh.hf_hub_download("vindex-org/nope", "index.json")
    with pytest.raises(hh.errors.EntryNotFoundError):
        hh.hf_hub_download("vindex-org/m", "missing.json")
