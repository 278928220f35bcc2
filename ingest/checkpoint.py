"""Lazy, per-layer access to a model's safetensors weights, by architecture-neutral role.

Why not load the model with transformers: the weight jobs need one layer at a time, and a
loaded model holds all of them. Here the safetensors library (`safe_open`, `get_slice`) maps a
file only while one block of rows is copied out as float32, so resident memory stays at what
the caller keeps: about one layer plus the embedding, whatever the checkpoint's size.

Every matrix comes back as float32 in the `nn.Linear` orientation, (out_features, in_features):

    q (n_heads*hd, d)   k, v (n_kv_heads*hd, d)   o (d, n_heads*hd)
    gate, up (F, d)     down (d, F)               embedding, lm_head (vocab, d)

GPT-2 stores Conv1D weights as (in, out) and fuses q|k|v into c_attn: they are transposed and
split here. Dense non-gated FFNs (GPT-2 `c_fc`, BERT `intermediate.dense`) have no gate: their
input matrix W_in plays the gate's role (it is what reads the residual stream, as in LarQL's
gate_vectors.bin) and `up` is None.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from vindex.errors import InvalidValue, NotFound, WeightsError
from vindex.files import read_json

from .families import architecture_of

# -- safetensors access (the safetensors library; each read maps the file only while it copies) ----------

# stored dtypes the weight jobs read (bytes per element), each widened to float32 by _widen (exactly,
# but for F64, which rounds to nearest)
_FLOAT_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
_BLOCK_BYTES = 64 << 20
# the library's reasons for a file whose size disagrees with its header (cut short, or bytes appended)
_SIZE_REASONS = ("incomplete metadata", "invalid header length")


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str               # the safetensors dtype name: F32, F16, BF16, ...
    shape: tuple[int, ...]


@contextmanager
def _opened(path: Path, tensor: str | None = None):
    """`safe_open(path)` (torch tensors, memory-mapped), its errors raised as WeightsError naming the file."""
    where = f"{path}: tensor {tensor!r}" if tensor else str(path)
    try:
        with safe_open(path, framework="pt") as f:
            yield f
    except SafetensorError as e:
        reason = str(e)
        if any(r in reason for r in _SIZE_REASONS):
            raise WeightsError(f"{where}: the file's size does not match its safetensors header "
                               f"(truncated? safetensors says: {reason})") from None
        raise WeightsError(f"{where}: not a safetensors file, or a corrupt one (safetensors says: {reason})") from None
    except OSError as e:
        raise WeightsError(f"{where}: cannot read the file ({e.strerror or e})") from None


class SafetensorsFolder:
    """Every tensor of a folder's *.safetensors files, read on demand as float32."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise NotFound(f"{self.folder}: no *.safetensors files")
        self.tensors: dict[str, TensorInfo] = {}
        for path in files:               # opening validates each header against the file's size
            with _opened(path) as f:
                for name in f.keys():
                    s = f.get_slice(name)
                    self.tensors[name] = TensorInfo(path, s.get_dtype(), tuple(s.get_shape()))

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise WeightsError(f"{self.folder}: no tensor {name!r} in the safetensors files") from None

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Tensor `name` (optionally rows[a:b] of its first axis) as a fresh float32 array.

        Rows are copied one block (at most _BLOCK_BYTES of the stored tensor) at a time, each block
        through its own `safe_open`, so the file's pages are mapped only while that block is copied:
        a big tensor never sits in memory twice (mapped pages + the float32 copy).
        """
        t = self.info(name)
        if t.dtype not in _FLOAT_DTYPES:
            raise WeightsError(f"{t.file}: tensor {name!r} has dtype {t.dtype}; the weights job reads "
                               f"{', '.join(_FLOAT_DTYPES)} (dequantize first)")
        if not t.shape:
            out = np.empty((), np.float32)
            with _opened(t.file, name) as f:
                _widen(out, f.get_tensor(name))
            return out
        a, b, _ = (rows or slice(None)).indices(t.shape[0])
        b = max(a, b)
        inner = t.shape[1:]
        row_bytes = int(np.prod(inner, dtype=np.int64)) * _FLOAT_DTYPES[t.dtype]
        out = np.empty((b - a, *inner), np.float32)
        step = max(1, _BLOCK_BYTES // max(row_bytes, 1))
        for s in range(a, b, step):
            e = min(b, s + step)
            with _opened(t.file, name) as f:
                _widen(out[s - a:e - a], f.get_slice(name)[s:e])
        return out


def _widen(dst: np.ndarray, src) -> None:
    """Copy the torch tensor `src` (a view of the mapped file) into the float32 array `dst`.

    numpy copies the dtypes it has (one thread: measured here on 2 shared cores, reading every
    tensor of smollm2-135m took 0.29 s CPU this way and 1.1 s through torch's threaded copy_);
    torch widens bfloat16, which numpy lacks.
    """
    import torch

    if src.dtype == torch.bfloat16:
        torch.from_numpy(dst).copy_(src)
    else:
        dst[...] = src.numpy()


# -- a model's weights by role -----------------------------------------------------------------------

@dataclass
class FFNBlock:
    """One FFN (or one MoE expert): F features, each a gate row, an up row and a down column."""
    expert: int | None       # None: dense; -1: a shared expert (Qwen2-MoE)
    gate: np.ndarray         # (F, d); W_in for non-gated FFNs
    up: np.ndarray | None    # (F, d); None for non-gated FFNs (and when only gates were read)
    down: np.ndarray | None  # (d, F); None when only gates were read

    @property
    def n_features(self) -> int:
        return self.gate.shape[0]


@dataclass
class Attention:
    q: np.ndarray   # (n_heads*hd, d)
    k: np.ndarray   # (n_kv_heads*hd, d)
    v: np.ndarray   # (n_kv_heads*hd, d)
    o: np.ndarray   # (d, n_heads*hd)


@dataclass
class ModelShape:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    n_experts: int | None = None
    extra: dict = field(default_factory=dict)


def text_config(config: dict) -> dict:
    """The language model's part of a config (multimodal Gemma 3 nests it under text_config)."""
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def model_shape(config: dict) -> ModelShape:
    c = text_config(config)
    d = c.get("hidden_size") or c.get("n_embd")
    n_heads = c.get("num_attention_heads") or c.get("n_head")
    n_layers = c.get("num_hidden_layers") or c.get("n_layer")
    if not (d and n_heads and n_layers):
        raise WeightsError(f"config.json lacks hidden_size / num_attention_heads / num_hidden_layers "
                           f"(model_type {config.get('model_type')!r})")
    return ModelShape(n_layers=int(n_layers), d_model=int(d), n_heads=int(n_heads),
                      n_kv_heads=int(c.get("num_key_value_heads") or n_heads),
                      head_dim=int(c.get("head_dim") or d // n_heads), vocab_size=int(c.get("vocab_size") or 0),
                      n_experts=c.get("num_local_experts") or c.get("num_experts"))


class ModelWeights:
    """A checkpoint folder read by role (embedding, attention, FFN, norms), one layer at a time."""

    def __init__(self, folder: str | Path, config: dict | None = None):
        self.folder = Path(folder)
        if config is None:
            cfg_path = self.folder / "config.json"
            if not cfg_path.is_file():
                raise NotFound(f"{self.folder}: no config.json")
            config = read_json(cfg_path, WeightsError)
        self.config = config
        self.model_type = config.get("model_type")
        self.arch = architecture_of(self.model_type, str(self.folder / "config.json"))
        self.shape = model_shape(config)
        self.files = SafetensorsFolder(self.folder)
        self.base = self._find_base()

    def __repr__(self) -> str:
        return f"ModelWeights({str(self.folder)!r}, {self.model_type}, layers={self.n_layers})"

    @property
    def n_layers(self) -> int:
        return self.shape.n_layers

    def _find_base(self) -> str:
        for base in self.arch.bases:
            if base + self.arch.embed in self.files:
                return base
        found = [n for n in self.files.tensors if n.endswith(self.arch.embed)]
        if found:
            return found[0][: -len(self.arch.embed)]
        raise WeightsError(f"{self.folder}: no embedding tensor '*{self.arch.embed}' for a {self.model_type} "
                           f"model; the safetensors hold e.g. {sorted(self.files.tensors)[:5]}")

    def _name(self, rel: str, i: int | None = None, e: int | None = None) -> str:
        prefix = self.base + (self.arch.layer.format(i=i) if i is not None else "")
        return prefix + rel.format(e=e)

    def _check_layer(self, i: int) -> None:
        if not 0 <= i < self.n_layers:
            raise InvalidValue(f"block index {i} is out of range: the model has {self.n_layers} blocks (0..{self.n_layers - 1})")

    def _linear(self, name: str) -> np.ndarray:
        w = self.files.read(name)
        return np.ascontiguousarray(w.T) if self.arch.conv1d else w

    # embedding and unembedding -------------------------------------------------------------------
    @property
    def embedding_name(self) -> str:
        return self.base + self.arch.embed

    def embedding(self, rows: slice | None = None) -> np.ndarray:
        """W_E (vocab, d), raw: no embed scale (LarQL's convention)."""
        return self.files.read(self.embedding_name, rows)

    @property
    def vocab_rows(self) -> int:
        return self.files.info(self.embedding_name).shape[0]

    @property
    def lm_head_name(self) -> str | None:
        """The untied output matrix's tensor name; None when the unembedding is tied to W_E."""
        for n in self.arch.lm_heads:
            if n in self.files:
                return n
        return None

    def final_norm(self) -> np.ndarray | None:
        """The final norm's effective scale (with Gemma's +1), or None when there is none (BERT)."""
        if self.arch.final_norm is None:
            return None
        return self.files.read(self._name(self.arch.final_norm)) + self.arch.norm_offset

    def post_ffn_norm(self, i: int) -> np.ndarray | None:
        """Gemma 2/3's post-feedforward norm scale of block i (with the +1), else None."""
        if self.arch.post_ffn_norm is None:
            return None
        return self.files.read(self._name(self.arch.post_ffn_norm, i)) + self.arch.norm_offset

    # attention -------------------------------------------------------------------------------------
    def attention(self, i: int) -> Attention:
        self._check_layer(i)
        s = self.shape
        if self.arch.qkv:  # GPT-2: c_attn (d, 3d) Conv1D -> rows q|k|v of the (3d, d) Linear form
            qkv = self._linear(self._name(self.arch.qkv[0], i))
            q, k, v = (np.ascontiguousarray(m) for m in np.split(qkv, 3, axis=0))
            o = self._linear(self._name(self.arch.qkv[1], i))
        else:
            q, k, v, o = (self._linear(self._name(n, i)) for n in self.arch.attn)
        want = {"q": (s.n_heads * s.head_dim, s.d_model), "k": (s.n_kv_heads * s.head_dim, s.d_model),
                "v": (s.n_kv_heads * s.head_dim, s.d_model), "o": (s.d_model, s.n_heads * s.head_dim)}
        for role, m in zip("qkvo", (q, k, v, o)):
            if m.shape != want[role]:
                raise WeightsError(f"{self.folder}: block {i} attention {role} has shape {m.shape}, expected "
                                   f"{want[role]} from config.json (heads {s.n_heads}, kv heads {s.n_kv_heads}, "
                                   f"head_dim {s.head_dim})")
        return Attention(q, k, v, o)

    # FFN ------------------------------------------------------------------------------------------
    def is_moe(self, i: int) -> bool:
        a = self.arch
        return bool(a.experts and (self._name(a.experts[0], i, 0) in self.files
                                   or self._name(a.experts_fused[0], i) in self.files))

    def ffn(self, i: int, gates_only: bool = False) -> list[FFNBlock]:
        """The FFN of block i: one dense block, or one block per expert (+ a shared expert, -1).

        With `gates_only`, up and down are not read (the OV-gate job needs only the gates).
        """
        self._check_layer(i)
        a = self.arch
        if not self.is_moe(i):
            gate_n, up_n, down_n = (self._name(n, i) if n else None for n in a.ffn)
            return [self._block(None, gate_n, up_n, down_n, i, gates_only)]
        blocks = []
        fused_gate_up = self._name(a.experts_fused[0], i)
        if fused_gate_up in self.files:
            gate_up = self.files.read(fused_gate_up)                  # (E, 2F, d): gate rows, then up rows
            down = None if gates_only else self.files.read(self._name(a.experts_fused[1], i))  # (E, d, F)
            f = gate_up.shape[1] // 2
            blocks = [FFNBlock(e, gate_up[e, :f].copy(), None if gates_only else gate_up[e, f:].copy(),
                               None if gates_only else down[e].copy()) for e in range(gate_up.shape[0])]
        else:
            e = 0
            while self._name(a.experts[0], i, e) in self.files:
                blocks.append(self._block(e, *(self._name(n, i, e) for n in a.experts), i, gates_only))
                e += 1
        if a.shared_expert and self._name(a.shared_expert[0], i) in self.files:
            blocks.append(self._block(-1, *(self._name(n, i) for n in a.shared_expert), i, gates_only))
        return blocks

    def _block(self, expert, gate_n, up_n, down_n, i, gates_only=False) -> FFNBlock:
        gate = self._linear(gate_n)
        if gates_only:
            return FFNBlock(expert, gate, None, None)
        up = self._linear(up_n) if up_n else None
        down = self._linear(down_n)
        d = self.shape.d_model
        if gate.shape[1] != d or down.shape[0] != d or down.shape[1] != gate.shape[0] or \
                (up is not None and up.shape != gate.shape):
            raise WeightsError(f"{self.folder}: block {i} FFN{'' if expert is None else f' expert {expert}'} "
                               f"has inconsistent shapes gate {gate.shape}, up {None if up is None else up.shape}, "
                               f"down {down.shape} (d_model {d})")
        return FFNBlock(expert, gate, up, down)

    def router(self, i: int) -> np.ndarray | None:
        if self.arch.router and self.is_moe(i):
            return self.files.read(self._name(self.arch.router, i))
        return None
