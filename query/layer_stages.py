"""Stages: a model's layers cut into contiguous runs that represent the prompts alike, from the
model's own layer-by-layer CKA matrix S (L x L, S_ii = 1), and the SQL function over it.

The fit. Each layer i is described by its similarity profile, row i of S. A partition of the layers
0..L-1 into k contiguous stages costs the within-stage sum of squares of those profiles,

    SSE_k = sum_stages sum_{i in stage} ||S_i - mean_{j in stage} S_j||^2,

and the optimal partition for every k <= max_stages is found exactly by dynamic programming over the
last stage boundary (optimal partitioning, Jackson et al. 2005; Bellman 1961):

    C_1(j) = cost(0, j),   C_k(j) = min_{i < j} C_{k-1}(i-1) + cost(i, j)           O(k L^2)

cost(i, j) from prefix sums of ||S_l||^2 and of S_l. R^2_k = 1 - SSE_k / SSE_1 is the share of the
profiles' spread the k stages explain.

The null: a smooth decay without stages. S0_ij = mean of S over the entries at the same lag |i - j|
(the matrix's own decay profile, Toeplitz), R = S - S0 the rest; a surrogate is
S* = S0 + P R P^T for a random permutation P of the layers: the same decay, the same deviations,
but no longer lined up in contiguous runs. Where S is a smooth decay plus unstructured deviations,
S* is distributed like S.

The count: the gap statistic's idea (Tibshirani, Walther & Hastie 2001) on the scale of R^2, the
excess of the stages' explained share over what the surrogates' own best k stages explain,

    Gap(k) = R^2_k - mean_b R^2*_k(b),   s_k = sd_b(R^2*_k) sqrt(1 + 1/B),
    k_hat  = k_max = argmax_k Gap(k)  if Gap(k_max) > s_k_max,  else 1

(the "global max" rule, `cluster::clusGap(method = "globalmax")`; the one-SE rules stop a stage
early when a long stage holds two short ones' worth of spread). On the log SSE scale of the original the gap grows without bound as k nears the number of layers
(SSE -> 0) and over-splits a 10-layer model; R^2 is bounded, so once the stages are found further
cuts explain no more than they do in the surrogates. Gap(1) = 0: k_hat = 1 where no count beats the
null by more than the null's own spread.

and its support: p = (1 + #{R^2*_k_hat >= R^2_k_hat}) / (1 + B) (Phipson & Smyth 2010); no p for
k_hat = 1 (one stage is no structure). `n_stages` fixes k instead (its p is computed the same way).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from vindex.errors import InvalidValue

from .arguments import check
from .macros import DEFAULT_ESTIMATOR, DEFAULT_POOLING, POOLED_WHAT, POOLED_WHERE, ModelInfo, model_checks, number_checks
from .vectors import scalars

FUNCTION = "stages"
DEFAULT_MAX_STAGES = 8
DEFAULT_PERMUTATIONS = 99
MIN_LAYERS = 3


# -- the optimal partition ----------------------------------------------------------------------
def segment_costs(S: np.ndarray) -> np.ndarray:
    """cost[i, j] (i <= j): the sum of squares of rows i..j of S around their mean (inf for i > j)."""
    L = S.shape[0]
    sq = np.concatenate([[0.0], np.cumsum((S ** 2).sum(axis=1))])     # prefix sums of ||S_l||^2
    rows = np.vstack([np.zeros(L), np.cumsum(S, axis=0)])            # prefix sums of S_l
    cost = np.full((L, L), np.inf)
    for i in range(L):
        tot = rows[i + 1:] - rows[i]                                  # (L - i, L): sums of rows i..j
        m = np.arange(1, L - i + 1)
        cost[i, i:] = np.maximum(sq[i + 1:] - sq[i] - (tot ** 2).sum(axis=1) / m, 0.0)
    return cost


def optimal_partitions(S: np.ndarray, max_stages: int) -> list[tuple[float, list[int]]]:
    """For k = 1..min(max_stages, L): (SSE_k, the first layer index of each stage) of the best
    contiguous partition into k stages (ties: the earliest boundaries)."""
    L = S.shape[0]
    cost = segment_costs(S)
    K = min(max_stages, L)
    C = np.full((K + 1, L), np.inf)       # C[k, j]: best cost of layers 0..j in k stages
    back = np.zeros((K + 1, L), np.int64)
    C[1] = cost[0]
    for k in range(2, K + 1):
        for j in range(k - 1, L):
            cand = C[k - 1, k - 2:j] + cost[k - 1:j + 1, j]           # the last stage starts at i = k-1..j
            best = int(np.argmin(cand))
            C[k, j], back[k, j] = cand[best], best + k - 1
    out = []
    for k in range(1, K + 1):
        starts, j = [], L - 1
        for kk in range(k, 1, -1):
            i = back[kk, j]
            starts.append(int(i))
            j = i - 1
        out.append((float(C[k, L - 1]), [0] + starts[::-1]))
    return out


def smooth_decay(S: np.ndarray) -> np.ndarray:
    """S0: each entry replaced by the mean of S at its lag |i - j| (the matrix's own decay profile)."""
    L = S.shape[0]
    lag = np.abs(np.subtract.outer(np.arange(L), np.arange(L)))
    means = np.bincount(lag.ravel(), weights=S.ravel()) / np.bincount(lag.ravel())
    return means[lag]


def surrogates(S: np.ndarray, count: int, seed: int = 0):
    """`count` null matrices S0 + P (S - S0) P^T, one random layer permutation P each."""
    S0 = smooth_decay(S)
    R = S - S0
    rng = np.random.default_rng(seed)
    for _ in range(count):
        p = rng.permutation(S.shape[0])
        yield S0 + R[np.ix_(p, p)]


@dataclass
class Stages:
    """The fit of one similarity matrix (see the module docstring)."""
    S: np.ndarray
    n_stages: int                          # the count chosen (or given)
    starts: list[int]                      # first layer index of each stage
    sse: np.ndarray                        # SSE_k, k = 1..K
    gap: np.ndarray | None = None          # Gap(k) (excess R^2 over the null) and s_k (None without a null)
    gap_se: np.ndarray | None = None
    null_r2: np.ndarray | None = None      # (B, K) R^2 of the surrogates
    criterion: str = "gap"
    partitions: list[list[int]] = field(default_factory=list)

    @property
    def r2(self) -> np.ndarray:
        return 1 - self.sse / self.sse[0] if self.sse[0] > 0 else np.zeros_like(self.sse)

    def p_value(self, k: int | None = None) -> float | None:
        k = self.n_stages if k is None else k
        if self.null_r2 is None or k < 2:
            return None
        null = self.null_r2[:, k - 1]
        return float((1 + (null >= self.r2[k - 1] - 1e-12).sum()) / (1 + len(null)))

    def null_p95(self, k: int | None = None) -> float | None:
        k = self.n_stages if k is None else k
        return None if self.null_r2 is None else float(np.percentile(self.null_r2[:, k - 1], 95))

    def stage_rows(self) -> list[dict]:
        """One dict per stage: first/last index, within-stage mean similarity (pairs i < j; None for a
        one-layer stage) and the mean similarity of its layers with every layer outside it."""
        L = self.S.shape[0]
        ends = self.starts[1:] + [L]
        out = []
        for s, (a, b) in enumerate(zip(self.starts, ends)):
            inside = np.zeros(L, bool)
            inside[a:b] = True
            block = self.S[a:b, a:b]
            m = b - a
            within = float((block.sum() - np.trace(block)) / (m * (m - 1))) if m > 1 else None
            between = float(self.S[np.ix_(inside, ~inside)].mean()) if (~inside).any() else None
            out.append({"stage": s + 1, "first": a, "last": b - 1, "within": within, "between": between})
        return out


def fit_stages(S, max_stages: int = DEFAULT_MAX_STAGES, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
               n_stages: int | None = None) -> Stages:
    """Stages of a symmetric similarity matrix S (L x L, L >= 3): the optimal partition for each k,
    the count by the gap statistic against the smooth-decay surrogates (or `n_stages`), and the nulls."""
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise InvalidValue(f"{FUNCTION}: expected a square similarity matrix, got shape {S.shape}")
    L = S.shape[0]
    if L < MIN_LAYERS:
        raise InvalidValue(f"{FUNCTION}: needs at least {MIN_LAYERS} layers to cut into stages, got {L}")
    if not np.isfinite(S).all():
        raise InvalidValue(f"{FUNCTION}: the similarity matrix holds NaN or inf")
    K = min(max_stages, L)
    if n_stages is not None and not 1 <= n_stages <= K:
        raise InvalidValue(f"{FUNCTION}: n_stages must be between 1 and min(max_stages, layers) = {K}, got {n_stages}")
    if n_stages is None and not permutations:
        raise InvalidValue(f"{FUNCTION}: the stage count is chosen against the null (the gap statistic): "
                           "permutations must be >= 1, or give n_stages")
    fits = optimal_partitions(S, K)
    sse = np.array([c for c, _ in fits])
    res = Stages(S, 1, [0], sse, partitions=[p for _, p in fits])
    if permutations:
        null_sse = np.array([[c for c, _ in optimal_partitions(X, K)] for X in surrogates(S, permutations, seed)])
        res.null_r2 = 1 - null_sse / np.where(null_sse[:, :1] > 0, null_sse[:, :1], 1.0)
        res.gap = res.r2 - res.null_r2.mean(axis=0)          # excess R^2 over the smooth-decay null
        res.gap_se = res.null_r2.std(axis=0) * np.sqrt(1 + 1 / permutations)
    if n_stages is None:
        top = int(np.argmax(res.gap))
        k = top + 1 if res.gap[top] > res.gap_se[top] else 1
        res.criterion = "gap"
    else:
        k, res.criterion = n_stages, "given"
    res.n_stages, res.starts = k, res.partitions[k - 1]
    return res


# -- the UDF ------------------------------------------------------------------------------------
STAGE_FIELDS = [("stage", pa.int32()), ("first_layer", pa.int32()), ("last_layer", pa.int32()),
                ("within", pa.float64()), ("between", pa.float64())]
RESULT_TYPE = pa.struct([("n_stages", pa.int32()), ("criterion", pa.string()), ("r2", pa.float64()),
                         ("null_r2_p95", pa.float64()), ("p_value", pa.float64()),
                         ("within", pa.float64()), ("between", pa.float64()),
                         ("stages", pa.list_(pa.struct(STAGE_FIELDS)))])
RESULT_SQL = ("STRUCT(n_stages INTEGER, criterion VARCHAR, r2 DOUBLE, null_r2_p95 DOUBLE, p_value DOUBLE, "
              "within DOUBLE, between DOUBLE, stages STRUCT(stage INTEGER, first_layer INTEGER, last_layer INTEGER, "
              "within DOUBLE, between DOUBLE)[])")


def similarity_matrix(layers_a, layers_b, values, label: str) -> tuple[list[int], np.ndarray]:
    """The layers and the square matrix of (layer_a, layer_b, value) triples (every pair present once)."""
    layers = sorted(set(int(x) for x in layers_a))
    where = {layer: i for i, layer in enumerate(layers)}
    S = np.full((len(layers), len(layers)), np.nan)
    for la, lb, v in zip(layers_a, layers_b, values):
        if v is None:
            raise InvalidValue(f"{label}: the CKA of layers {la} and {lb} is undefined (a constant layer); "
                               "stages need every layer: try another pooling")
        S[where[int(la)], where[int(lb)]] = v
    return layers, S


def udf_stages(layers_a, layers_b, values, label, max_stages, n_stages, permutations, seed) -> pa.Array:
    """vindex_stages(list(layer_a), list(layer_b), list(cka), label, max_stages, n_stages, permutations, seed)."""
    las, lbs, vs = layers_a.to_pylist(), layers_b.to_pylist(), values.to_pylist()
    n = len(las)
    out = []
    for la, lb, v, lab, K, k, count, s in zip(las, lbs, vs, scalars(label, n), scalars(max_stages, n),
                                             scalars(n_stages, n), scalars(permutations, n), scalars(seed, n)):
        K = check(FUNCTION, "max_stages", K)
        count, s = check(FUNCTION, "permutations", count), check(FUNCTION, "seed", s)
        k = None if k is None else check(FUNCTION, "n_stages", k)
        if la is None:
            out.append(None)
            continue
        layers, S = similarity_matrix(la, lb, v, f"{FUNCTION}: {lab}")
        if len(layers) < MIN_LAYERS:
            raise InvalidValue(f"{FUNCTION}: {lab} has {len(layers)} layer(s) ({', '.join(map(str, layers))}); "
                               f"stages need at least {MIN_LAYERS}")
        fit = fit_stages(S, K, count, s, k)
        rows = fit.stage_rows()
        inside = np.zeros_like(S, bool)
        for r in rows:
            inside[r["first"]:r["last"] + 1, r["first"]:r["last"] + 1] = True
        off = ~np.eye(len(layers), dtype=bool)
        out.append({"n_stages": fit.n_stages, "criterion": fit.criterion,
                    "r2": float(fit.r2[fit.n_stages - 1]), "null_r2_p95": fit.null_p95(), "p_value": fit.p_value(),
                    "within": float(S[inside & off].mean()) if (inside & off).any() else None,
                    "between": float(S[~inside].mean()) if (~inside).any() else None,
                    "stages": [{"stage": r["stage"], "first_layer": layers[r["first"]],
                                "last_layer": layers[r["last"]], "within": r["within"], "between": r["between"]}
                               for r in rows]})
    return pa.array(out, RESULT_TYPE)


UDFS = [("vindex_stages", udf_stages, RESULT_SQL)]


# -- the SQL ------------------------------------------------------------------------------------
def stages_sql(models: list[ModelInfo]) -> str:
    fn = FUNCTION
    return f"""
CREATE OR REPLACE MACRO {fn}(model_name, pooling := '{DEFAULT_POOLING}', estimator := '{DEFAULT_ESTIMATOR}',
                             prompt_set := NULL, max_stages := {DEFAULT_MAX_STAGES}, n_stages := NULL,
                             permutations := {DEFAULT_PERMUTATIONS}, seed := 0) AS TABLE
WITH
checks AS (SELECT {number_checks(fn, 'max_stages', 'permutations', 'seed')}
                  AND (n_stages IS NULL OR {number_checks(fn, 'n_stages')})
                  AND {model_checks(fn, 'pooled', ['model_name'], POOLED_WHERE, POOLED_WHAT)} AS ok),
g AS (SELECT r.layer AS layer,
             vindex_layer_gram(list(r.act), list((r.prompt_set, r.prompt_id)), 'model ' || model_name || ' layer ' || r.layer,
                               estimator, 'linear', 'none') AS x
      FROM pooled AS r WHERE r.model = model_name AND {POOLED_WHERE} GROUP BY r.layer),
pairs AS (
  SELECT a.layer AS layer_a, b.layer AS layer_b,
         CASE WHEN a.x.n_distinct <> a.x.n THEN error('{fn}: layer ' || a.layer || ' lists the same prompt twice (' ||
                   a.x.n || ' rows, ' || a.x.n_distinct || ' distinct); filter by prompt_set or pooling')
              WHEN a.x.rows_key <> b.x.rows_key THEN error('{fn}: layers ' || a.layer || ' and ' || b.layer || ' of ' ||
                   model_name || ' hold different prompts (' || a.x.n || ' vs ' || b.x.n || ' rows); choose one prompt_set')
              ELSE list_dot_product(a.x.g, b.x.g) END AS cka,
         a.x.n AS n
  FROM g AS a CROSS JOIN g AS b),
fit AS (SELECT vindex_stages(list(p.layer_a), list(p.layer_b), list(p.cka), 'model ' || model_name,
                             max_stages, n_stages, permutations, seed) AS f, any_value(p.n) AS n
        FROM pairs AS p),
info AS (SELECT any_value(mm.n_layers)::DOUBLE AS n_layers FROM models AS mm WHERE mm.model = model_name),
u AS (SELECT fit.f, fit.n, unnest(fit.f.stages) AS s FROM fit)
SELECT model_name AS model, u.s.stage AS stage, u.s.first_layer AS first_layer, u.s.last_layer AS last_layer,
       u.s.first_layer / i.n_layers AS depth_start, u.s.last_layer / i.n_layers AS depth_end,
       u.s.within AS within, u.s.between AS between, u.f.n_stages AS n_stages, u.f.criterion AS criterion,
       u.f.r2 AS r2, u.f.null_r2_p95 AS null_r2_p95, u.f.p_value AS p_value, u.f.within AS within_all,
       u.f.between AS between_all, u.n AS n, pooling AS pooling, vindex_cka_options(estimator, 'linear', 'none').estimator AS estimator,
       max_stages::INTEGER AS max_stages, permutations::INTEGER AS permutations, seed::INTEGER AS seed
FROM checks AS c CROSS JOIN info AS i CROSS JOIN u
WHERE c.ok
ORDER BY u.s.stage
"""


def macros(models: list[ModelInfo]) -> list[str]:
    return [stages_sql(models)]
