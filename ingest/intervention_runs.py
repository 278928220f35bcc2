"""What the intervention jobs (patch, ablate, steer) share: the model, its vindex, a resumable run, logits.

    lm = load_lm("smollm2-135m")                     # model + tokenizer + family (decoders only)
    w = open_model_vindex(lm, out=None)              # lake/<name>, created or added to
    run = InterventionRun(w, "patching", "factual", params, n_parts=5, resume=True)
    for part in run.todo():
        run.write(part, rows)                         # one shard + one manifest commit per part
    run.finish()

A run writes `data/<table>/run_id=<run_id>/part-NNNNN.parquet`, one part per unit of work, each
committed on its own (the one writer's atomic shard + manifest commit), and records its arguments in
the manifest under `extraction["<table>.<run_id>"]`. A rerun with the same arguments skips the parts
already committed, so a run killed at any point (kill -9 included) resumes to the result of an
uninterrupted one: every part is a pure function of the arguments. A rerun with other arguments is
refused unless resume=False, which first forgets, then deletes, the run's old parts.

Logits: every batch the jobs run holds prompts of one length (no padding), so the logits at the last
position are `logits_to_keep=1` of a plain forward pass; `batches_by_length` makes such batches.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vindex.errors import InvalidValue, ManifestError
from vindex.files import safe_join
from vindex.writer import VindexWriter

from .sources import ModelSource, load_model, resolve_model


@dataclass
class LanguageModel:
    src: ModelSource
    model: object
    tokenizer: object
    device: str

    @property
    def family(self) -> str:
        return self.src.family


def load_lm(source, *, device: str | None = None, progress: bool = True) -> LanguageModel:
    """A decoder with its LM head (float32, eval mode) from anything `resolve_model` takes (a
    LanguageModel already loaded is returned as is: a job that steers several times loads once)."""
    if isinstance(source, LanguageModel):
        return source
    import torch
    src = source if isinstance(source, ModelSource) else resolve_model(source, progress=progress)
    if src.is_encoder:
        raise InvalidValue(f"{src.name} is an encoder ({src.family}): it predicts no next token, so there is "
                           "no answer logit to patch, ablate or steer; use a decoder model")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(src, device=device, progress=progress)
    return LanguageModel(src, model, tok, device)


def open_model_vindex(lm: LanguageModel, out=None, name: str | None = None) -> VindexWriter:
    """The vindex of `lm`'s model at `out` (default lake/<name>): created, or reopened to add to."""
    mm = {k: v for k, v in lm.src.manifest_model().items() if v is not None}
    name = name or lm.src.name
    root = Path(out) if out is not None else Path("lake") / name
    w = VindexWriter.create(root, name, model=mm, exist_ok=True)
    if w.manifest["model"].get("id") != mm["id"]:
        raise ManifestError(f"{root}: this vindex holds model {w.manifest['model'].get('id')!r}, not "
                            f"{mm['id']!r}; choose another out folder")
    return w


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not run_id or not all(c.isalnum() or c in "_.-" for c in run_id) \
            or run_id in (".", ".."):
        raise InvalidValue(f"run_id {run_id!r} must be a name made of [A-Za-z0-9_.-]")
    return run_id


class InterventionRun:
    """One run of an intervention job into `table`, resumable part by part (see the module doc)."""

    def __init__(self, w: VindexWriter, table: str, run_id: str, params: dict, n_parts: int, resume: bool):
        self.w, self.table, self.run_id = w, table, check_run_id(run_id)
        self.key = f"{table}.{run_id}"
        self.params = json.loads(json.dumps(params))      # as the manifest will hold it
        self.n_parts = n_parts
        prev = w.manifest["extraction"].get(self.key)
        if prev is not None and prev.get("params") != self.params:
            if resume:
                diff = sorted(k for k in set(self.params) | set(prev.get("params") or {})
                              if (prev.get("params") or {}).get(k) != self.params.get(k))
                raise InvalidValue(f"{w.root}: {table} run {run_id!r} was made with other arguments (differing: "
                                   f"{', '.join(diff)}); pass resume=False (--no-resume) to redo it, or another "
                                   "run_id (--run-id)")
        if prev is not None and (not resume or prev.get("params") != self.params):
            self._drop()
        w.update(extraction={self.key: {"params": self.params, "n_parts": n_parts, "complete": False}})

    def partition(self) -> dict:
        return {"run_id": self.run_id}

    def todo(self) -> list[int]:
        """The parts not yet committed."""
        return [p for p in range(self.n_parts) if not self.w.has_shard(self.table, self.partition(), p)]

    def write(self, part: int, rows: dict) -> None:
        self.w.write_shard(self.table, rows, self.partition(), part)

    def finish(self, **record) -> None:
        self.w.manifest["extraction"][self.key].update(complete=True, **json.loads(json.dumps(record)))
        self.w.commit()

    def _drop(self) -> None:
        """Forget, then delete, this run's old parts (a manifest never lists a deleted file)."""
        t = self.w.manifest["tables"].get(self.table)
        prefix = f"data/{self.table}/run_id={self.run_id}/"
        doomed = [e["path"] for e in (t or {}).get("files", []) if e["path"].startswith(prefix)]
        if t:
            t["files"] = [e for e in t["files"] if not e["path"].startswith(prefix)]
        self.w.manifest["extraction"].pop(self.key, None)
        self.w.commit()
        for rel in doomed:
            safe_join(self.w.root, rel).unlink(missing_ok=True)


def run_rows(run: InterventionRun) -> int:
    return sum(e["rows"] for e in run.w.manifest["tables"].get(run.table, {}).get("files", [])
               if e["path"].startswith(f"data/{run.table}/run_id={run.run_id}/"))


def batches_by_length(lengths, batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of equal length (so no batch needs padding), at most batch_size each,
    in a fixed order (length, then index): a pure function of the inputs."""
    if batch_size < 1:
        raise InvalidValue(f"batch_size must be >= 1, got {batch_size}")
    by: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by.setdefault(int(n), []).append(i)
    return [idx[k:k + batch_size] for n in sorted(by) for idx in [by[n]] for k in range(0, len(idx), batch_size)]


def last_logits(model, ids) -> "torch.Tensor":
    """Logits at the last position, float32 [B, vocab], of a batch of unpadded ids [B, T]."""
    import torch
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=False, logits_to_keep=1, return_dict=True)
    return out.logits[:, -1].float()


def token_ranks(logits, token_ids) -> np.ndarray:
    """Rank of each row's token among all tokens by logit (0 = the top token)."""
    import torch
    tok = torch.as_tensor(token_ids, device=logits.device).reshape(-1, 1)
    chosen = logits.gather(1, tok)
    return (logits > chosen).sum(1).cpu().numpy().astype(np.int32)


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([int(token_id)])


def say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr)
