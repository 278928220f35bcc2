"""Activation patching: write a clean run's value at one (site, layer, position) into the corrupted run.

    patch("smollm2-135m")                                   # the shipped factual pairs -> lake/smollm2-135m
    patch("smollm2-135m", "my_pairs.jsonl", sites="resid_post", layers="10-20", positions="last")

For a pair (clean prompt c, corrupted prompt k, answer token a, wrong token w) the metric is the
logit difference at the last position, LD(x) = logit_a(x) - logit_w(x), and a patch of site s at
layer l and position p is scored by the normalised restoration (Meng et al. 2022, "Locating and
Editing Factual Associations in GPT"; Heimersheim & Nanda 2024, "How to use and interpret activation
patching"):

    restoration = (LD(k with s_l[p] := s_l[p] of c) - LD(k)) / (LD(c) - LD(k))

0 = the patch changes nothing, 1 = it restores the clean difference (null when LD(c) = LD(k)).
Sites and layers follow vindex.ingest.sites (TransformerLens names; layer l = block l - 1's value;
resid_post also has layer 0, the embedding output).

Batching: each forward pass runs up to `batch_size` rows, each row one corrupted prompt patched at a
different (site, layer, position), with the unpatched corrupted prompt as one more row per pair; rows
of every pair of a part whose corrupted prompts have one length share batches (no padding, so the
last position's logits are `logits_to_keep=1`). The clean values come from one read pass per batch of
equal-length clean prompts (SiteHooks reads). bench/bench_patch.py compares a sweep with the bare
forward passes of the same batches.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vindex.errors import InvalidValue
from vindex.layers import parse_layers

from .intervention_runs import (InterventionRun, batches_by_length, last_logits, load_lm, open_model_vindex,
                                run_rows, say, token_text)
from .pairs import EncodedPair, encode_pairs, load_pairs
from .sites import SiteHooks, check_sites

DEFAULT_PATCH_SITES = "resid_post,attn_out,mlp_out"
LAST_TIMINGS: dict = {}     # setup_s / run_s / run_cpu_s of the last patch() in this process (bench/bench_patch.py)


@dataclass(frozen=True)
class PatchRow:
    """One patched run: pair `pair` (index into the part), site value (site, layer) read at the clean
    prompt's clean_position and written at the corrupted prompt's position; site None = unpatched."""
    pair: int
    site: str | None = None
    layer: int = -1
    clean_position: int = -1
    position: int = -1


def site_layers(sites, layers, n_layers: int, family: str) -> list[tuple[str, int]]:
    """(site, layer) pairs of the sweep: resid_post at 0..n_layers, the others at 1..n_layers."""
    sites = check_sites(sites, family)
    chosen = parse_layers(layers, n_layers)
    return [(s, l) for s in sites for l in chosen if l >= 1 or s == "resid_post"]


def sweep_rows(enc: list[EncodedPair], sweep: list[tuple[str, int]]) -> list[PatchRow]:
    """Every row of a part: per pair, the unpatched corrupted run, then site x layer x position."""
    rows = []
    for i, e in enumerate(enc):
        rows.append(PatchRow(i))
        rows += [PatchRow(i, s, l, cp, kp) for s, l in sweep for cp, kp in e.positions]
    return rows


def sweep_batches(enc: list[EncodedPair], rows: list[PatchRow], batch_size: int):
    """(clean batches: indices into enc, patch batches: indices into rows), each of one prompt length."""
    clean = batches_by_length([len(e.clean_ids) for e in enc], batch_size)
    patched = batches_by_length([len(enc[r.pair].corrupt_ids) for r in rows], batch_size)
    return clean, patched


def clean_values(model, family: str, enc: list[EncodedPair], batches, sweep, device):
    """Per pair: {(site, layer): value [T, width]} of its clean run, and LD(clean) as logits [V]."""
    import torch
    values: list[dict] = [None] * len(enc)
    logits: list = [None] * len(enc)
    for batch in batches:
        ids = torch.as_tensor(np.stack([enc[i].clean_ids for i in batch]), device=device)
        with SiteHooks(model, family, reads=sweep) as hooks:
            out = last_logits(model, ids)
        for j, i in enumerate(batch):
            values[i] = {key: v[j] for key, v in hooks.captured.items()}
            logits[i] = out[j]
    return values, logits


def patched_logits(model, family: str, ids, patches: list[tuple[int, str, int, int, object]]):
    """Last-position logits [B, V] of `ids` [B, T] with each patch (row, site, layer, position, value [width])
    written over the site's value at that row and position (one SiteHooks edit per (site, layer))."""
    import torch
    groups: dict[tuple[str, int], list] = {}
    for row, site, layer, pos, value in patches:
        groups.setdefault((site, layer), []).append((row, pos, value))

    def edit_of(items):
        rows = torch.tensor([r for r, _, _ in items], device=ids.device)
        pos = torch.tensor([p for _, p, _ in items], device=ids.device)
        vals = torch.stack([v for _, _, v in items])

        def edit(v):
            return v.index_put((rows, pos), vals.to(v.dtype))
        return edit
    with SiteHooks(model, family, edits={key: edit_of(items) for key, items in groups.items()}):
        return last_logits(model, ids)


def run_part(model, family: str, enc: list[EncodedPair], sweep, batch_size: int, device, token=None) -> dict:
    """The `patching` columns of one part (its pairs' whole sweep)."""
    import torch
    rows = sweep_rows(enc, sweep)
    clean_batches, patch_batches = sweep_batches(enc, rows, batch_size)
    values, clean_logits = clean_values(model, family, enc, clean_batches, sweep, device)
    ld = np.zeros(len(rows), dtype=np.float32)
    for batch in patch_batches:
        ids = torch.as_tensor(np.stack([enc[rows[r].pair].corrupt_ids for r in batch]), device=device)
        patches = [(j, rows[r].site, rows[r].layer, rows[r].position,
                    values[rows[r].pair][(rows[r].site, rows[r].layer)][rows[r].clean_position])
                   for j, r in enumerate(batch) if rows[r].site is not None]
        logits = patched_logits(model, family, ids, patches)
        a = torch.tensor([enc[rows[r].pair].answer_id for r in batch], device=logits.device)
        w = torch.tensor([enc[rows[r].pair].wrong_id for r in batch], device=logits.device)
        ld[batch] = (logits.gather(1, a[:, None]) - logits.gather(1, w[:, None]))[:, 0].cpu().numpy()
    ld_clean = np.array([float(lg[e.answer_id] - lg[e.wrong_id]) for e, lg in zip(enc, clean_logits)], np.float32)
    ld_corrupt = np.zeros(len(enc), dtype=np.float32)
    for r, row in enumerate(rows):
        if row.site is None:
            ld_corrupt[row.pair] = ld[r]
    keep = [r for r, row in enumerate(rows) if row.site is not None]
    pair = np.array([rows[r].pair for r in keep], dtype=np.int64)
    clean, corrupt, patched = ld_clean[pair], ld_corrupt[pair], ld[keep]
    den = clean - corrupt
    with np.errstate(divide="ignore", invalid="ignore"):
        restoration = np.where(den != 0, (patched - corrupt) / den, np.nan).astype(np.float32)
    token = token or (lambda i: str(i))
    return {
        "pair_id": [enc[p].pair.pair_id for p in pair],
        "category": [enc[p].pair.category for p in pair],
        "site": [rows[r].site for r in keep],
        "layer": [rows[r].layer for r in keep],
        "position": [rows[r].position for r in keep],
        "clean_position": [rows[r].clean_position for r in keep],
        "token": [token(int(enc[rows[r].pair].corrupt_ids[rows[r].position])) for r in keep],
        "answer_token_id": [enc[p].answer_id for p in pair],
        "wrong_token_id": [enc[p].wrong_id for p in pair],
        "logit_diff_clean": clean, "logit_diff_corrupt": corrupt, "logit_diff_patched": patched,
        "restoration": _nullable(restoration),
    }


def _nullable(x: np.ndarray):
    import pyarrow as pa
    return pa.array(x, type=pa.float32(), mask=np.isnan(x))


def patch(source, pairs="factual", out=None, *, name: str | None = None, sites: str = DEFAULT_PATCH_SITES,
          layers=None, positions: str = "all", run_id: str | None = None, batch_size: int = 64,
          pairs_per_part: int = 16, resume: bool = True, progress: bool = True, device: str | None = None) -> Path:
    """Sweep layer x position x site over every pair and write the `patching` table; returns the vindex folder.

    source: a decoder (folder, .gguf, Hub id or offline name). pairs: 'factual' (shipped, 78 pairs) or a
      JSONL/CSV file of clean, corrupt, answer, wrong. out: the vindex (default lake/<name>).
    sites: comma-separated site names (vindex.ingest.sites). layers: '0-8,12' or None for all.
    positions: 'all' (every position: both prompts of a pair must tokenize to one length), 'last', or
      indices and names '0,3,-1', 'subject,last' (subject: the last position where the prompts differ).
    run_id: the run's name in the table (default: the pair set's name). batch_size: rows (patched
      runs) per forward pass. pairs_per_part: pairs per shard (the unit of resume).
    resume: skip the parts a killed run committed (same arguments); False redoes the run.
    """
    t0 = time.perf_counter()
    ps = load_pairs(pairs)
    lm = load_lm(source, device=device, progress=progress)
    n_layers = int(lm.src.manifest_model()["n_layers"])
    sweep = site_layers(sites, layers, n_layers, lm.family)
    enc = encode_pairs(lm.tokenizer, ps, positions)
    if pairs_per_part < 1:
        raise InvalidValue(f"pairs_per_part must be >= 1, got {pairs_per_part}")
    parts = [enc[k:k + pairs_per_part] for k in range(0, len(enc), pairs_per_part)]
    w = open_model_vindex(lm, out, name)
    params = {"pairs": ps.source, "pairs_sha256": ps.sha256, "model_id": lm.src.model_id,
              "model_revision": lm.src.revision, "sites": sorted({s for s, _ in sweep}),
              "layers": sorted({l for _, l in sweep}), "positions": str(positions),
              "pairs_per_part": pairs_per_part}
    run = InterventionRun(w, "patching", run_id or ps.name, params, len(parts), resume)
    todo = run.todo()
    t1, c1 = time.perf_counter(), time.process_time()
    for k in todo:
        run.write(k, run_part(lm.model, lm.family, parts[k], sweep, batch_size, lm.device,
                              token=lambda i: token_text(lm.tokenizer, i)))
        say(progress, f"patching {run.run_id}: part {k + 1}/{len(parts)} ({len(parts[k])} pairs)")
    run.finish(metric="logit(answer) - logit(wrong) at the last position",
               restoration="(patched - corrupt) / (clean - corrupt); null when clean = corrupt",
               batching="rows of one corrupted-prompt length share a forward pass; one unpatched row per pair",
               n_pairs=len(enc), sweep_size=len(sweep) * sum(len(e.positions) for e in enc))
    LAST_TIMINGS.update(setup_s=t1 - t0, run_s=time.perf_counter() - t1, run_cpu_s=time.process_time() - c1,
                        parts=len(todo))
    say(progress, f"patched {w.root} ({run.run_id}: {len(enc)} pairs x {len(sweep)} site-layers, "
                  f"{run_rows(run)} rows) in {time.perf_counter() - t0:.1f} s")
    return w.root
