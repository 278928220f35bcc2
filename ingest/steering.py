"""Steering: add alpha * direction to the residual stream at one layer and watch token logits move.

    steer("smollm2-135m", direction, layer=15, alphas="0,2,4,8", targets=" Paris", controls=" Rome, London")

At vindex layer l (block l's output, site resid_post; layer 0 = the embedding output), every position
of every prompt gets

    resid_post_l := resid_post_l + alpha * direction          (activation addition; Turner et al. 2023)

and each prompt is scored at its last position on the target and control tokens: logit, probability,
and the logit's change from alpha = 0. The null: `null` random directions of the same norm at the same
layer (Gaussian, normalised to ||direction||; numpy default_rng(seed)), run through the same alphas and
written as rows with is_null = true and direction_id null-<k>. A steering effect means something only
where the real direction moves the target logits beyond what random directions of its size do.

The direction is plain numbers (a numpy array, or a .npy / .txt file of d_model floats); the CLI also
takes a SQL query over the lake (a pooled-mean difference, a feature's W_down column, a mapped
direction), run by the query floor, never imported here.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from vindex.errors import InvalidValue

from .intervention_runs import (InterventionRun, batches_by_length, last_logits, load_lm, open_model_vindex,
                                run_rows, say, token_text)
from .pairs import load_answered_prompts, token_list
from .sites import SiteHooks


def parse_alphas(alphas) -> list[float]:
    if isinstance(alphas, str):
        try:
            alphas = [float(a) for a in alphas.split(",") if a.strip()]
        except ValueError:
            raise InvalidValue(f"alphas {alphas!r}: give numbers like '0,2,4,8'") from None
    out = [float(a) for a in (alphas or [])]
    if not out:
        raise InvalidValue("alphas: the sweep is empty; give at least one alpha, e.g. '0,2,4,8'")
    if not all(np.isfinite(out)):
        raise InvalidValue(f"alphas {out}: every alpha must be finite")
    return out


def read_direction(direction, d_model: int) -> np.ndarray:
    """A direction of width d_model from an array-like or a .npy (no pickles) / .txt file; InvalidValue else."""
    if isinstance(direction, (str, Path)):
        path = Path(direction).expanduser()
        if not path.is_file():
            raise InvalidValue(f"direction {str(direction)!r}: no such file (give a .npy or .txt file of "
                               f"{d_model} numbers, or an array)")
        try:
            vec = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.float64)
        except (ValueError, OSError) as e:
            raise InvalidValue(f"{path}: not a readable direction ({e}); give a .npy or .txt file of numbers") from None
    else:
        vec = direction
    try:
        vec = np.asarray(vec, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidValue("direction: not an array of numbers") from None
    vec = vec.reshape(-1) if vec.ndim == 2 and 1 in vec.shape else vec
    if vec.ndim != 1 or vec.shape[0] != d_model:
        raise InvalidValue(f"direction: width {vec.shape[0] if vec.ndim == 1 else vec.shape} does not match the "
                           f"model's residual stream (d_model {d_model})")
    if not np.isfinite(vec).all() or not np.any(vec):
        raise InvalidValue("direction: holds NaN/inf or is all zeros")
    return vec


def null_directions(norm: float, d_model: int, n: int, seed: int) -> np.ndarray:
    """n Gaussian directions normalised to `norm` (the null: random directions of equal norm)."""
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((n, d_model))
    return r * (norm / np.linalg.norm(r, axis=1, keepdims=True))


def steered_logits(model, family, ids, layer: int, direction, alphas):
    """Last-position logits [B, V] with resid_post[layer] += alphas[b] * direction at every position of row b."""
    import torch
    d = torch.as_tensor(direction, dtype=torch.float32, device=ids.device)
    a = torch.as_tensor(alphas, dtype=torch.float32, device=ids.device)[:, None, None]

    def edit(v):
        return v + (a * d).to(v.dtype)
    with SiteHooks(model, family, edits={("resid_post", layer): edit}):
        return last_logits(model, ids)


def steer(source, direction, layer: int, out=None, *, name: str | None = None, alphas="0,1,2,4,8",
          prompts="factual", targets=" Paris", controls=None, null: int = 8, seed: int = 0,
          run_id: str | None = None, batch_size: int = 64, resume: bool = True, progress: bool = True,
          device: str | None = None) -> Path:
    """Add alpha * direction to resid_post at `layer` and write the `steering` table, with its null.

    direction: d_model numbers (array, .npy or .txt; the CLI also takes SQL). layer: vindex layer
      (0 = embedding output, i = block i's output). alphas: '0,1,2,4,8' or a list (not empty).
    prompts: 'factual' (the shipped pairs' clean prompts), a prompt set or a file. targets / controls:
      tokens scored (' Paris, Rome'); each must be a single token. null: random directions of equal norm
      (the null; rows marked is_null), drawn with numpy default_rng(seed).
    run_id: the run's name (default: 'L<layer>-' + a hash of the direction). resume: skip committed parts.
    """
    t0 = time.perf_counter()
    alpha_list = parse_alphas(alphas)
    if null < 0:
        raise InvalidValue(f"null must be >= 0 random directions, got {null}")
    lm = load_lm(source, device=device, progress=progress)
    mm = lm.src.manifest_model()
    n_layers, d_model = int(mm["n_layers"]), int(mm["d_model"])
    if not isinstance(layer, int) or not 0 <= layer <= n_layers:
        raise InvalidValue(f"layer {layer!r}: this model has layers 0-{n_layers} (0 = embedding output)")
    vec = read_direction(direction, d_model)
    tok = lm.tokenizer
    tokens = [("target", t) for t in token_list(tok, targets, "targets")] + \
             [("control", t) for t in token_list(tok, controls, "controls")]
    if not any(r == "target" for r, _ in tokens):
        raise InvalidValue("targets: give at least one target token to score (e.g. ' Paris')")
    pname, psha, rows = load_answered_prompts(prompts)
    ids = [np.asarray(tok(p.text)["input_ids"], dtype=np.int64) for p in rows]
    norm = float(np.linalg.norm(vec))
    directions = [("direction", False, vec)] + [(f"null-{k}", True, v) for k, v in
                                                enumerate(null_directions(norm, d_model, null, seed))]
    w = open_model_vindex(lm, out, name)
    digest = hashlib.sha256(np.ascontiguousarray(vec, dtype=np.float64).tobytes()).hexdigest()[:10]
    params = {"direction_sha256": digest, "layer": layer, "alphas": alpha_list, "prompts": pname,
              "prompts_sha256": psha, "tokens": [[r, t] for r, t in tokens], "null": null, "seed": seed,
              "model_id": lm.src.model_id, "model_revision": lm.src.revision}
    run = InterventionRun(w, "steering", run_id or f"L{layer}-{digest}", params, len(directions), resume)
    for k in run.todo():
        did, is_null, d = directions[k]
        run.write(k, _direction_rows(lm, layer, d, did, is_null, norm, alpha_list, rows, ids, tokens, batch_size))
    run.finish(edit="resid_post[layer] += alpha * direction at every position", scored="last position",
               null=f"{null} Gaussian directions normalised to ||direction|| = {norm:.6g}, numpy default_rng({seed})",
               direction_norm=norm)
    say(progress, f"steered {w.root} at layer {layer} ({run.run_id}: {len(rows)} prompts x {len(alpha_list)} alphas x "
                  f"{len(directions)} directions, {run_rows(run)} rows) in {time.perf_counter() - t0:.1f} s")
    return w.root


def _direction_rows(lm, layer, d, did, is_null, norm, alphas, rows, ids, tokens, batch_size) -> dict:
    """Rows of one direction: prompt x alpha x token, with logit_change against the unsteered run."""
    import torch
    tok_ids = torch.tensor([t for _, t in tokens])
    base = np.zeros((len(rows), len(tokens)), np.float32)
    for batch in batches_by_length([len(x) for x in ids], batch_size):       # unsteered: no hook at all
        x = torch.as_tensor(np.stack([ids[i] for i in batch]), device=lm.device)
        base[batch] = last_logits(lm.model, x)[:, tok_ids.to(x.device)].cpu().numpy()
    jobs = [(i, a) for i in range(len(rows)) for a in alphas]
    logit = np.zeros((len(jobs), len(tokens)), np.float32)
    prob = np.zeros((len(jobs), len(tokens)), np.float32)
    for batch in batches_by_length([len(ids[i]) for i, _ in jobs], batch_size):
        x = torch.as_tensor(np.stack([ids[jobs[j][0]] for j in batch]), device=lm.device)
        lg = steered_logits(lm.model, lm.family, x, layer, d, [jobs[j][1] for j in batch])
        t = tok_ids.to(lg.device)
        logit[batch] = lg[:, t].cpu().numpy()
        prob[batch] = torch.softmax(lg, -1)[:, t].cpu().numpy()
    n_t, n = len(tokens), len(jobs) * len(tokens)
    prompt = np.repeat([i for i, _ in jobs], n_t)
    return {"direction_id": [did] * n, "is_null": [is_null] * n, "layer": [layer] * n,
            "alpha": np.repeat([a for _, a in jobs], n_t), "direction_norm": [norm] * n,
            "prompt_id": [rows[i].prompt_id for i in prompt], "role": [r for r, _ in tokens] * len(jobs),
            "token_id": [t for _, t in tokens] * len(jobs),
            "token": [token_text(lm.tokenizer, t) for _, t in tokens] * len(jobs),
            "logit": logit.reshape(-1), "prob": prob.reshape(-1),
            "logit_change": (logit - base[[i for i, _ in jobs]]).reshape(-1)}
