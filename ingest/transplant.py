"""Transplant: a concept direction found in model A, carried into model B by a stored Rosetta map, steers B.

    transplant("smollm2-135m", "gemma3-270m", 15, "french", "german", "lake",
               prompts=..., targets=" le, la", controls=" der, die")

The concept is the difference of two prompt categories' pooled means at a layer (a "French minus
German" direction; Turner et al. 2023's activation addition uses such differences):

    v_A = mean_{i in positive} x_i - mean_{i in negative} x_i          x_i: A's pooled row at layer_a

The stored map (the `maps` table in B's vindex, fitted by `vindex rosetta A B --store` with the
method asked for) takes A's layer_a to B's layer_b and carries the direction as v_A W (no bias: it
cancels in a difference; `vindex.maps.map_direction`). B is steered at layer_b with four arms, each
rescaled to the norm of B's own direction, so that only where they point differs:

    mapped     v_A W                                 the transplant
    native     v_B = the same difference of means in B's pooled rows at layer_b (the reference)
    unmapped   v_A zero-padded (d_A < d_B) or truncated (d_A > d_B) to d_B: no map at all
    null       `null` Gaussian directions of the same norm (steering's own null, numpy default_rng(seed))

Each arm is one `steering` run in B's vindex (ingest.steering.steer, run_id <run_id>-<arm>; the null's
rows belong to the mapped run). Per arm and alpha the result table gives the mean change of the target
tokens' logits over the prompts, the same for the controls, the effect (target minus control change;
the target change alone without controls), and the effect's place in the null: the null's mean and
95th percentile and p = (1 + #{null effect >= effect}) / (1 + null). The pooled rows and the map are
read through core (`vindex.reader`, `vindex.maps`): data flows through the lake, never through an
import of vindex.query.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vindex.errors import InvalidValue, NotFound
from vindex.lake import lake_members
from vindex.maps import StoredMap, map_direction, read_map
from vindex.manifest import MANIFEST
from vindex.reader import Vindex

from .intervention_runs import load_lm
from .steering import steer

ARMS = ("mapped", "native", "unmapped")
RESID_POST = "resid_post"   # pooled rows written before the site column hold resid_post only


def find_vindex(sources, name: str) -> Path:
    """The folder of vindex `name` among `sources` (lake roots or vindex folders); NotFound naming those there are."""
    found = {}
    for src in [sources] if isinstance(sources, (str, Path)) else list(sources or (".",)):
        root = Path(src).expanduser()
        for folder in ([root] if (root / MANIFEST).exists() else lake_members(root)):
            found.setdefault(Vindex.open(folder).name, folder)
    if name not in found:
        raise NotFound(f"transplant: no vindex {name!r} in {', '.join(map(str, [sources] if isinstance(sources, (str, Path)) else sources))}"
                       f"; the lake holds: {', '.join(sorted(found)) or 'no vindexes'}")
    return found[name]


def category_direction(root: Path, layer: int, positive: str, negative: str, pooling: str,
                       prompt_set: str | None = None) -> tuple[np.ndarray, int, int]:
    """mean(pooled rows of `positive` prompts) - mean(rows of `negative` prompts) at `layer` of the vindex
    at `root` (site resid_post, the given pooling and prompt set), and the two categories' row counts."""
    vx = Vindex.open(root)
    t = vx.read("pooled", layers=[int(layer)])
    keep = pc.equal(t["pooling"], pooling)
    if "site" in t.column_names:
        keep = pc.and_(keep, pc.equal(pc.fill_null(t["site"], RESID_POST), RESID_POST))
    if prompt_set is not None:
        keep = pc.and_(keep, pc.equal(t["prompt_set"], prompt_set))
    t = t.filter(keep)
    if t.num_rows == 0:
        raise InvalidValue(f"transplant: {vx.name!r} layer {layer} has no pooled rows with pooling = {pooling!r}"
                           + (f" and prompt_set = {prompt_set!r}" if prompt_set is not None else ""))
    prompts = vx.read("prompts", columns=["prompt_set", "prompt_id", "category"])
    category = {(s, i): c for s, i, c in zip(*(prompts[k].to_pylist() for k in ("prompt_set", "prompt_id", "category")))}
    cats = np.array([category.get(k) for k in zip(t["prompt_set"].to_pylist(), t["prompt_id"].to_pylist())], object)
    act = t["act"].combine_chunks()
    X = act.flatten().to_numpy(zero_copy_only=False).reshape(t.num_rows, -1).astype(np.float64)
    means, counts = [], []
    for c in (positive, negative):
        rows = cats == c
        if not rows.any():
            have = sorted({x for x in cats.tolist() if x is not None})
            raise InvalidValue(f"transplant: {vx.name!r} holds no pooled rows of category {c!r} at layer {layer}; "
                               f"its categories: {', '.join(have) or 'none'}")
        means.append(X[rows].mean(axis=0))
        counts.append(int(rows.sum()))
    if positive == negative:
        raise InvalidValue(f"transplant: positive and negative are both {positive!r}; the direction would be 0")
    return means[0] - means[1], counts[0], counts[1]


def unmapped_direction(v: np.ndarray, d_b: int) -> np.ndarray:
    """A's direction in B's width with no map: zero-padded (d_A < d_B) or truncated (d_A > d_B)."""
    out = np.zeros(d_b)
    k = min(len(v), d_b)
    out[:k] = v[:k]
    return out


def transplant_directions(m: StoredMap, v_a: np.ndarray, v_b: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
    """arm -> (direction rescaled to ||v_b||, its norm before rescaling)."""
    norm_b = float(np.linalg.norm(v_b))
    raw = {"mapped": map_direction(m, v_a), "native": v_b, "unmapped": unmapped_direction(v_a, len(v_b))}
    out = {}
    for arm, d in raw.items():
        n = float(np.linalg.norm(d))
        if not n > 0 or not np.isfinite(n):
            raise InvalidValue(f"transplant: the {arm} direction is zero or not finite; nothing to steer with")
        out[arm] = (d * (norm_b / n), n)
    return out


def transplant(model_a: str, model_b: str, layer_a: int, positive: str, negative: str, sources=".", *,
               source=None, method: str = "ridge", alphas="0,1,2,4,8", prompts="factual", targets=" Paris",
               controls=None, null: int = 8, seed: int = 0, run_id: str | None = None, batch_size: int = 64,
               resume: bool = True, progress: bool = True, device: str | None = None) -> pa.Table:
    """Carry the `positive` minus `negative` direction of model_a's layer_a into model_b through the stored
    `method` map, steer model_b with it, and compare with B's native direction, the unmapped vector and
    random directions of equal norm (the module doc). Returns one row per arm and alpha.

    sources: the lake (root or vindex folders) holding both vindexes; model_b's must hold the map
      (`vindex rosetta A B --store`). source: model_b's weights (default: its name, e.g. gemma3-270m).
    alphas, prompts, targets, controls, null, seed, batch_size, resume, device: as `steer`'s.
    run_id: the runs' prefix (default transplant-L<layer_a>-<method>-<hash of the concept>).
    """
    root_a, root_b = find_vindex(sources, model_a), find_vindex(sources, model_b)
    try:
        m = read_map(root_b, model_a, layer_a, method)
    except NotFound as e:
        raise NotFound(f"transplant: {e}") from None
    info = m.info
    layer_b, pooling, prompt_set = int(info["layer_b"]), info["pooling"], info["prompt_set"]
    v_a, n_pos, n_neg = category_direction(root_a, layer_a, positive, negative, pooling, prompt_set)
    v_b, _, _ = category_direction(root_b, layer_b, positive, negative, pooling, prompt_set)
    directions = transplant_directions(m, v_a, v_b)
    concept = hashlib.sha256(repr((model_a, positive, negative, pooling, prompt_set)).encode()).hexdigest()[:8]
    prefix = run_id or f"transplant-L{layer_a}-{method}-{concept}"
    lm = load_lm(model_b if source is None else source, device=device, progress=progress)
    common = dict(name=model_b, alphas=alphas, prompts=prompts, targets=targets, controls=controls, seed=seed,
                  batch_size=batch_size, resume=resume, progress=progress)
    runs = {}
    for arm in ARMS:
        runs[arm] = f"{prefix}-{arm}"
        steer(lm, directions[arm][0], layer_b, root_b, null=null if arm == "mapped" else 0, run_id=runs[arm],
              **common)
    native = directions["native"][0]
    cosine = {arm: float(d @ native / (np.linalg.norm(d) * np.linalg.norm(native))) for arm, (d, _) in directions.items()}
    rows = summarise(Vindex.open(root_b), runs)
    base = {"model_a": model_a, "layer_a": int(layer_a), "model_b": model_b, "layer_b": layer_b, "method": method,
            "positive": positive, "negative": negative, "pooling": pooling, "n_positive": n_pos, "n_negative": n_neg,
            "map_r2": info.get("r2"), "norm": float(np.linalg.norm(native))}
    out = [{**base, "arm": r["arm"], "raw_norm": directions[r["arm"]][1], "cos_native": cosine[r["arm"]], **r}
           for r in rows]
    return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)


RESULT_SCHEMA = pa.schema([
    ("model_a", pa.string()), ("layer_a", pa.int32()), ("model_b", pa.string()), ("layer_b", pa.int32()),
    ("method", pa.string()), ("positive", pa.string()), ("negative", pa.string()), ("arm", pa.string()),
    ("alpha", pa.float64()), ("target_change", pa.float64()), ("control_change", pa.float64()),
    ("effect", pa.float64()), ("null_mean", pa.float64()), ("null_p95", pa.float64()), ("p_value", pa.float64()),
    ("cos_native", pa.float64()), ("raw_norm", pa.float64()), ("norm", pa.float64()), ("n_prompts", pa.int32()),
    ("n_null", pa.int32()), ("n_positive", pa.int32()), ("n_negative", pa.int32()), ("map_r2", pa.float64()),
    ("pooling", pa.string()), ("run_id", pa.string()),
])


def summarise(vx: Vindex, runs: dict[str, str]) -> list[dict]:
    """Per arm and alpha, from the `steering` rows of the runs: target / control change and effect (means
    over prompts), and the null's effects (the mapped run's is_null rows) at the same alpha."""
    t = vx.read("steering", columns=["run_id", "direction_id", "is_null", "alpha", "prompt_id", "role",
                                     "logit_change"])
    frames = {arm: _effects(t.filter(pc.equal(t["run_id"], rid))) for arm, rid in runs.items()}
    null = frames["mapped"]["null"]
    out = []
    for arm, rid in runs.items():
        for alpha, (target, control, effect, n) in sorted(frames[arm]["direction"].items()):
            ref = np.array([e for (a, _), (_, _, e, _) in null.items() if a == alpha])
            row = {"arm": arm, "run_id": rid, "alpha": alpha, "target_change": target, "control_change": control,
                   "effect": effect, "n_prompts": n, "n_null": len(ref)}
            if len(ref):
                row.update(null_mean=float(ref.mean()), null_p95=float(np.percentile(ref, 95)),
                           p_value=float((1 + (ref >= effect - 1e-12).sum()) / (1 + len(ref))))
            out.append(row)
    return out


def _effects(t: pa.Table) -> dict:
    """{'direction': {alpha: (target, control, effect, n_prompts)}, 'null': {(alpha, direction_id): ...}}"""
    out = {"direction": {}, "null": {}}
    cols = {k: t[k].to_numpy(zero_copy_only=False) for k in ("direction_id", "is_null", "alpha", "prompt_id",
                                                              "role", "logit_change")}
    for did in sorted(set(cols["direction_id"].tolist())):
        sel = cols["direction_id"] == did
        for alpha in sorted(set(cols["alpha"][sel].tolist())):
            s = sel & (cols["alpha"] == alpha)
            target = _prompt_mean(cols, s & (cols["role"] == "target"))
            control = _prompt_mean(cols, s & (cols["role"] == "control"))
            effect = target - (control if control is not None else 0.0)
            value = (target, control, effect, int(len(set(cols["prompt_id"][s].tolist()))))
            if cols["is_null"][s].any():
                out["null"][(alpha, did)] = value
            else:
                out["direction"][alpha] = value
    return out


def _prompt_mean(cols, s) -> float | None:
    """Mean over prompts of each prompt's mean logit change over the tokens selected."""
    if not s.any():
        return None
    ids, x = cols["prompt_id"][s], cols["logit_change"][s].astype(np.float64)
    per = [x[ids == i].mean() for i in np.unique(ids)]
    return float(np.mean(per))


__all__ = ["transplant", "category_direction", "unmapped_direction", "transplant_directions", "find_vindex", "ARMS"]
