"""The model cache's GGUF conversion: one metadata parse per conversion (parsed_once), the
plain-view reader reads what gguf's own reader reads, and the header fields the cache records.
That the cached weights compute what transformers' own GGUF load computes is in test_sources.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ingest_fixtures import make_tiny_gguf
from vindex.ingest import model_cache


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


def _count_parses(monkeypatch) -> list:
    """Every full metadata walk by gguf's reader (ours subclasses it) appends to the list."""
    from gguf.gguf_reader import GGUFReader
    calls, real = [], GGUFReader._build_fields

    def counted(self, offs, count):
        calls.append(self.data.filename if hasattr(self.data, "filename") else None)
        return real(self, offs, count)
    monkeypatch.setattr(GGUFReader, "_build_fields", counted)
    return calls


def test_a_conversion_parses_the_gguf_once(tiny_gguf, tmp_path, monkeypatch):
    calls = _count_parses(monkeypatch)
    entry = tmp_path / "cache" / "tiny-x"
    model_cache.dequantize_into(entry, lambda tmp: tiny_gguf, {"gguf": str(tiny_gguf)}, progress=False)
    assert len(calls) == 1                       # transformers' own loader alone walks it 4 times

    # ... and transformers' loader, run again outside, walks it more than once: the count is real
    calls.clear()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    AutoConfig.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)
    assert len(calls) >= 3


def test_parsed_once_restores_the_swapped_names(tiny_gguf):
    import gguf
    from transformers import modeling_gguf_pytorch_utils as hf_gguf
    before = (gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        with model_cache.parsed_once(tiny_gguf):
            assert gguf.GGUFReader is not before[0]
            assert gguf.GGUFReader(str(tiny_gguf)) is gguf.GGUFReader(str(tiny_gguf))   # one shared parse
            raise KeyboardInterrupt
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint) == before
    assert model_cache._PARSED == {}


def test_parsed_once_gives_transformers_the_same_metadata(tiny_gguf, tmp_path):
    """The shared parse and the memoised metadata give what transformers' loader gives alone, and
    each caller gets its own copy (callers edit the dict they get)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    alone = load_gguf_checkpoint(str(tiny_gguf), return_tensors=False)
    with model_cache.parsed_once(tiny_gguf):
        from transformers import modeling_gguf_pytorch_utils as hf_gguf
        a = hf_gguf.load_gguf_checkpoint(str(tiny_gguf), return_tensors=False)
        a["config"]["edited"] = True
        b = hf_gguf.load_gguf_checkpoint(str(tiny_gguf), return_tensors=False)
    assert "edited" not in b["config"]
    assert json.dumps(b, sort_keys=True, default=str) == json.dumps(alone, sort_keys=True, default=str)


def test_plain_view_reader_reads_what_gguf_reads(tiny_gguf):
    from gguf.gguf_reader import GGUFReader
    ours, theirs = model_cache._plain_view_reader()(str(tiny_gguf)), GGUFReader(str(tiny_gguf))
    assert list(ours.fields) == list(theirs.fields)
    for key, f in theirs.fields.items():
        g = ours.fields[key]
        assert (g.offset, g.data, g.types) == (f.offset, f.data, f.types), key
        assert [bytes(p) for p in g.parts] == [bytes(p) for p in f.parts], key
    assert [(t.name, t.tensor_type, t.data_offset) for t in ours.tensors] == \
        [(t.name, t.tensor_type, t.data_offset) for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))


def test_gguf_metadata_records_the_header(tmp_path):
    import gguf
    path = tmp_path / "named.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("a named model")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_string("general.license", "apache-2.0")
    w.add_array("general.languages", ["en", "fr"])
    w.add_token_list([f"t{i}" for i in range(300)])          # a string array it must skip, not read
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    assert model_cache.gguf_metadata(path) == {"gguf_name": "a named model", "file_type": "Q4_K_M",
                                               "gguf_license": "apache-2.0", "gguf_languages": ["en", "fr"]}
    bare = tmp_path / "bare.gguf"
    w = gguf.GGUFWriter(str(bare), "llama")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    assert model_cache.gguf_metadata(bare) == {"gguf_name": None, "file_type": None, "gguf_license": None,
                                               "gguf_languages": None}
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 64)
    assert model_cache.gguf_metadata(junk)["gguf_name"] is None      # a nicety: never an error
