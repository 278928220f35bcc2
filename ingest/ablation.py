"""Feature ablation: set FFN features to zero (or their mean) and see which answers the model forgets.

    ablate("smollm2-135m", [(20, 1337), (21, 42)], targets=" Paris")   # -> lake/smollm2-135m, table ablations
    ablate("smollm2-135m", "20:1337,21:42", mode="mean", prompts="my_prompts.jsonl")

FFN feature f of layer l is column f of the MLP's hidden activations, the value W_down reads
(site mlp_post, TransformerLens's blocks.{l-1}.mlp.hook_post; `features` rows of layer l describe the
same f through W_down[:, f]). Ablating a set F replaces, at every position of every prompt,

    zero:  mlp_post_l[:, f] := 0                       (zero ablation)
    mean:  mlp_post_l[:, f] := mean over every token of the run's prompts of mlp_post_l[:, f]
           (mean ablation; Nanda 2023, "Attribution patching"; Wang et al. 2022, IOI)

and every prompt is scored at its last position on its answer token: logit, softmax probability
and rank, before and after. Prompts whose answer is one of `targets` are the targets (what the
ablation is meant to make the model forget), every other prompt a control (what else it forgets);
with no targets, every prompt is a target.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from vindex.errors import InvalidValue

from .intervention_runs import (InterventionRun, batches_by_length, last_logits, load_lm, open_model_vindex,
                                run_rows, say, token_ranks, token_text)
from .pairs import load_answered_prompts, single_token, token_list
from .sites import SiteHooks

ABLATION_MODES = ("zero", "mean")
PROMPTS_PER_PART = 64


def parse_features(features, n_layers: int, d_ffn: int | None) -> list[tuple[int, int]]:
    """(layer, feature) pairs from a list of pairs or a string '20:1337,21:42'; checked against the model."""
    if isinstance(features, str):
        items = []
        for part in filter(None, (p.strip() for p in features.split(","))):
            layer, sep, feat = part.partition(":")
            if not sep or not layer.strip().isdigit() or not feat.strip().isdigit():
                raise InvalidValue(f"features: cannot read {part!r}; give layer:feature pairs like '20:1337,21:42'")
            items.append((int(layer), int(feat)))
    else:
        try:
            items = [(int(l), int(f)) for l, f in (features or [])]
        except (TypeError, ValueError):
            raise InvalidValue("features: give (layer, feature) pairs, or a string like '20:1337,21:42'") from None
    if not items:
        raise InvalidValue("features: the selection is empty, so there is nothing to ablate (a SQL query over "
                           "`features` that selects no row gives this); check its WHERE clause")
    bad = [(l, f) for l, f in items if not 1 <= l <= n_layers or f < 0 or (d_ffn is not None and f >= d_ffn)]
    if bad:
        raise InvalidValue(f"features {bad[:5]}: out of range; FFN features live at layers 1..{n_layers} with "
                           f"indices 0..{(d_ffn or 0) - 1}")
    return sorted(set(items))


def by_layer(features: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for l, f in features:
        out.setdefault(l, []).append(f)
    return out


def feature_means(model, family, prompts_ids, layers_features: dict[int, list[int]], batch_size, device) -> dict:
    """{layer: mean activation [n_features]} of each feature over every token of the prompts (unablated)."""
    import torch
    sums = {l: torch.zeros(len(fs), dtype=torch.float64) for l, fs in layers_features.items()}
    n = 0
    for batch in batches_by_length([len(x) for x in prompts_ids], batch_size):
        ids = torch.as_tensor(np.stack([prompts_ids[i] for i in batch]), device=device)
        with SiteHooks(model, family, reads=[("mlp_post", l) for l in layers_features]) as hooks:
            last_logits(model, ids)
        for l, fs in layers_features.items():
            v = hooks.captured[("mlp_post", l)][..., fs].double()          # [B, T, n_features]
            sums[l] += v.sum((0, 1)).cpu()
        n += ids.numel()
    return {l: (s / n).float() for l, s in sums.items()}


def ablated_logits(model, family, ids, layers_features: dict[int, list[int]], values: dict | None = None):
    """Last-position logits with mlp_post[:, f] := values[l] (0 when None) for each layer's features f."""
    import torch

    def edit_of(layer, fs):
        idx = torch.tensor(fs, device=ids.device)

        def edit(v):
            new = torch.zeros(len(fs), dtype=v.dtype, device=v.device) if values is None \
                else values[layer].to(device=v.device, dtype=v.dtype)
            return v.index_copy(-1, idx, new.expand(*v.shape[:-1], len(fs)).contiguous())
        return edit
    with SiteHooks(model, family, edits={("mlp_post", l): edit_of(l, fs) for l, fs in layers_features.items()}):
        return last_logits(model, ids)


def ablate(source, features, out=None, *, name: str | None = None, prompts="factual", targets=None,
           mode: str = "zero", run_id: str | None = None, batch_size: int = 64, resume: bool = True,
           progress: bool = True, device: str | None = None) -> Path:
    """Ablate FFN features and write the `ablations` table (per prompt: answer logit/prob before and after).

    features: (layer, feature) pairs, or '20:1337,21:42' (the CLI also takes a SQL query over `features`).
    prompts: 'factual' (the shipped pairs' clean prompts with their answers), a JSONL/CSV file with text and
      answer columns, or a pairs file. targets: answer token(s) (' Paris', or ' Paris, Rome') whose prompts
      are the targets; the others are controls (default: every prompt is a target).
    mode: zero | mean (each feature's mean activation over every token of the prompts).
    run_id: the run's name (default: '<mode>-' + a hash of the features). resume: skip committed parts.
    """
    t0 = time.perf_counter()
    if mode not in ABLATION_MODES:
        raise InvalidValue(f"mode {mode!r}: choose one of {', '.join(ABLATION_MODES)}")
    lm = load_lm(source, device=device, progress=progress)
    mm = lm.src.manifest_model()
    feats = parse_features(features, int(mm["n_layers"]), mm.get("d_ffn"))
    pname, psha, rows = load_answered_prompts(prompts)
    missing = [p.prompt_id for p in rows if p.answer is None]
    if missing:
        raise InvalidValue(f"prompts {pname!r}: prompt(s) {missing[:10]} have no answer token to score; give a file "
                           "with text and answer columns, or a pairs file")
    tok = lm.tokenizer
    bad = [f"prompt {p.prompt_id}: {p.answer!r}" for p in rows if single_token(tok, p.answer) is None]
    if bad:
        raise InvalidValue(f"prompts {pname!r}: answers that are not single tokens for this tokenizer: {'; '.join(bad)}")
    target_ids = set(token_list(tok, targets, "targets")) if targets else None
    answer_ids = np.array([single_token(tok, p.answer) for p in rows], dtype=np.int64)
    roles = ["target" if target_ids is None or a in target_ids else "control" for a in answer_ids]
    if target_ids is not None and "target" not in roles:
        raise InvalidValue(f"targets {targets!r}: no prompt of {pname!r} has such an answer, so nothing is a target")
    ids = [np.asarray(tok(p.text)["input_ids"], dtype=np.int64) for p in rows]
    layers_features = by_layer(feats)
    w = open_model_vindex(lm, out, name)
    digest = hashlib.sha256(repr(feats).encode()).hexdigest()[:10]
    params = {"features": feats, "mode": mode, "prompts": pname, "prompts_sha256": psha,
              "targets": sorted(target_ids) if target_ids is not None else None, "model_id": lm.src.model_id,
              "model_revision": lm.src.revision}
    n_parts = -(-len(rows) // PROMPTS_PER_PART)
    run = InterventionRun(w, "ablations", run_id or f"{mode}-{digest}", params, n_parts, resume)
    values = feature_means(lm.model, lm.family, ids, layers_features, batch_size, lm.device) if mode == "mean" else None
    for k in run.todo():
        part = list(range(k * PROMPTS_PER_PART, min(len(rows), (k + 1) * PROMPTS_PER_PART)))
        run.write(k, _part_rows(lm, part, rows, ids, answer_ids, roles, layers_features, values, mode, len(feats),
                                batch_size))
    run.finish(edit="mlp_post[:, f] := 0 (zero) or its mean over every token of the run's prompts (mean), at every "
                    "position", scored="answer token at the last position", n_prompts=len(rows),
               n_targets=roles.count("target"),
               means={str(l): [float(x) for x in v] for l, v in values.items()} if values else None)
    say(progress, f"ablated {len(feats)} features of {w.root} ({run.run_id}: {len(rows)} prompts, "
                  f"{run_rows(run)} rows) in {time.perf_counter() - t0:.1f} s")
    return w.root


def _part_rows(lm, part, rows, ids, answer_ids, roles, layers_features, values, mode, n_features, batch_size):
    import torch
    before = np.zeros((len(part), 3), dtype=np.float64)
    after = np.zeros((len(part), 3), dtype=np.float64)
    for batch in batches_by_length([len(ids[i]) for i in part], batch_size):
        x = torch.as_tensor(np.stack([ids[part[j]] for j in batch]), device=lm.device)
        ans = answer_ids[[part[j] for j in batch]]
        for target, logits in ((before, last_logits(lm.model, x)),
                               (after, ablated_logits(lm.model, lm.family, x, layers_features, values))):
            a = torch.as_tensor(ans, device=logits.device)[:, None]
            target[batch, 0] = logits.gather(1, a)[:, 0].cpu().numpy()
            target[batch, 1] = torch.softmax(logits, -1).gather(1, a)[:, 0].cpu().numpy()
            target[batch, 2] = token_ranks(logits, ans)
    return {"prompt_id": [rows[i].prompt_id for i in part], "role": [roles[i] for i in part],
            "category": [rows[i].category for i in part], "text": [rows[i].text for i in part],
            "token_id": answer_ids[part], "token": [token_text(lm.tokenizer, answer_ids[i]) for i in part],
            "mode": [mode] * len(part), "n_features": [n_features] * len(part),
            "logit_before": before[:, 0], "logit_after": after[:, 0], "prob_before": before[:, 1],
            "prob_after": after[:, 1], "rank_before": before[:, 2].astype(np.int32),
            "rank_after": after[:, 2].astype(np.int32)}
