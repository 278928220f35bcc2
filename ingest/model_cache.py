"""The model cache: a GGUF dequantized once into float32 safetensors + tokenizer, atomically.

Why: dequantizing a GGUF through transformers takes 15-50 s; reading safetensors takes well under
one, and the weight jobs mmap them. An entry is `<cache>/<name>-<key>/`, where key hashes what
the weights came from (file path + size + mtime, or package + version) and the transformers
version. It is written in a hidden temp folder and renamed into place, so a killed conversion
never leaves a half-written model, and two processes converting at once both end up with one
finished entry. `vindex-source.json` in the entry records the GGUF's sha256, name and file type.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

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
        try:
            cfg = AutoConfig.from_pretrained(folder, gguf_file=fname)
        except (ValueError, KeyError, OSError) as e:
            raise UnsupportedArchitecture(f"{gguf}: transformers cannot read this GGUF ({e}); supported "
                                          f"families (model_type): {supported_families_text()}") from None
        family_of(cfg.model_type, str(gguf))
        if progress:
            print(f"vindex: dequantizing {gguf.name} once into {entry} (about 15-50 s)", flush=True)
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
        meta = {**descriptor, "sha256": sha256_file(gguf), "gguf_file": fname,
                "gguf_name": _gguf_name(gguf), "file_type": _gguf_file_type(gguf)}
        (out / SOURCE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        del model
        try:
            os.rename(out, entry)
        except OSError:
            if not is_cached(entry):  # someone else's finished entry is fine; anything else is not
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _gguf_fields(path: Path) -> dict:
    try:
        from gguf import GGUFReader
        r = GGUFReader(str(path))
        out = {}
        for key in ("general.name", "general.file_type"):
            f = r.fields.get(key)
            if f is not None:
                v = f.parts[f.data[0]]
                out[key] = bytes(v).decode("utf-8", "replace") if v.dtype.kind == "u" and key == "general.name" \
                    else int(v[0])
        return out
    except Exception:  # metadata is a nicety; never fail a conversion over it
        return {}


def _gguf_name(path: Path) -> str | None:
    return _gguf_fields(path).get("general.name")


def _gguf_file_type(path: Path) -> str | None:
    ft = _gguf_fields(path).get("general.file_type")
    if ft is None:
        return None
    try:
        from gguf import LlamaFileType
        return LlamaFileType(ft).name.removeprefix("MOSTLY_")
    except Exception:
        return str(ft)
