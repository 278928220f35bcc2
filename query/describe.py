"""DESCRIBE and WALK (LarQL's most used commands) as SQL table macros over the lake.

    SELECT * FROM "describe"('smollm2-135m', ' Paris'); -- per layer: what writes the token, what fires on it
                                                        -- (quoted: DESCRIBE is a DuckDB keyword)
    SELECT * FROM describe_all(' Paris');               -- the same for every model of the lake
    SELECT * FROM walk('smollm2-135m', 3);              -- per layer: the top features of prompt 3's last token

Three routes to "which FFN features are about this token", one row each, told apart by `source`:
  down_meta     the weights, output side: features f whose output direction W_down[:, f], read out
                through the unembedding (LarQL's down_meta, the `features` table), has the token among
                its top tokens; score = that logit. Needs `vindex weights` (or a LarQL import).
  feature_acts  the activations: features among the top-k |mlp_post| of the stored tokens that are
                this token (`vindex build --sites ...,mlp_post`); n = how many such tokens, score = the
                mean activation over them. frequency / topk_frequency (feature_summary) say how often
                the feature fires on any token: a feature that fires everywhere says little.
  gate          the weights, input side (LarQL's own DESCRIBE, a gate KNN): features ranked by
                |W_gate[f, :] . q| with q = embed_scale * W_E[t], the token's scaled input embedding;
                score = that dot product (signed), n = the ids whose text is the token (q is their
                mean: LarQL averages a multi-token entity's rows the same way). Needs the `embeddings`
                table and gate rows in features.vector: a LarQL import with --embeddings and
                --gate-vectors (a native vindex stores W_down columns there by default: no rows).
Tokens match as stored: feature_acts and embeddings hold the exact decoded text (' Paris' with its
leading space); down_meta text is stripped, as LarQL shows it, so the down_meta route compares
stripped texts (' Paris' finds features writing ' Paris' or 'Paris').
The layer band is the row's depth third: early (depth < 1/3), middle, late; the motivating study puts
token-level features early, domain circuits in the middle and entity features near half depth.

Floor: query (reads the views; never torch).
"""
from __future__ import annotations

DEFAULT_K = 5   # features per layer and source

BAND = ("CASE WHEN {d} < 1.0 / 3 THEN 'early' WHEN {d} < 2.0 / 3 THEN 'middle' ELSE 'late' END")

DESCRIBE_ROWS = f"""
CREATE OR REPLACE MACRO vindex_describe_rows(model_name, tok, k) AS TABLE
WITH
m AS (SELECT mm.model AS m_model, mm.n_layers AS m_layers FROM models AS mm
      WHERE model_name IS NULL OR mm.model = model_name),
labels AS (SELECT f.model AS l_model, f.layer AS l_layer, f.expert AS l_expert, f.feature AS l_feature,
                  f.top_token AS label, f.c_score AS l_c_score FROM features AS f
           WHERE model_name IS NULL OR f.model = model_name),
gate_models AS (
  -- the models whose features.vector holds W_gate rows (a LarQL import with gate vectors, or
  -- `vindex weights --vectors gate`), with the embed scale LarQL's DESCRIBE multiplies W_E[t] by
  SELECT g.model AS g_model,
         coalesce(TRY_CAST(json_extract_string(g.manifest, '$.model.embed_scale') AS DOUBLE), 1.0) AS embed_scale
  FROM models AS g
  WHERE (model_name IS NULL OR g.model = model_name)
    AND (coalesce(json_type(g.manifest, '$.extraction.gate_vectors'), 'NULL') <> 'NULL'
         OR json_extract_string(g.manifest, '$.extraction.weights.vectors') = 'gate')),
emb AS (SELECT e.model AS e_model, e.vector::FLOAT[] AS e_vector FROM embeddings AS e
        WHERE (model_name IS NULL OR e.model = model_name) AND e.token = tok),
stats AS (SELECT s.model AS s_model, s.layer AS s_layer, s.expert AS s_expert, s.feature AS s_feature,
                 avg(s.frequency) AS frequency, avg(s.topk_frequency) AS topk_frequency
          FROM feature_summary AS s WHERE model_name IS NULL OR s.model = model_name GROUP BY ALL),
writes AS (
  SELECT w.model, w.layer, w.expert, w.feature, w.t.logit AS score, NULL::BIGINT AS n
  FROM (SELECT f.model, f.layer, f.expert, f.feature, unnest(f.top_tokens) AS t FROM features AS f
        WHERE model_name IS NULL OR f.model = model_name) AS w
  WHERE trim(w.t.token) = trim(tok)),
fires AS (
  SELECT a.model, a.layer, a.expert, a.feature, avg(a.activation) AS score, count(*) AS n
  FROM feature_acts AS a WHERE (model_name IS NULL OR a.model = model_name) AND a.token = tok
  GROUP BY a.model, a.layer, a.expert, a.feature),
gates AS (
  -- score = W_gate[f, :] . (embed_scale * mean_t W_E[t]) = embed_scale * mean_t (W_gate[f, :] . W_E[t])
  SELECT f.model, f.layer, f.expert, f.feature,
         any_value(gm.embed_scale) * avg(list_dot_product(f.vector::FLOAT[], emb.e_vector)) AS score,
         count(*) AS n
  FROM features AS f JOIN gate_models AS gm ON gm.g_model = f.model JOIN emb ON emb.e_model = f.model
  WHERE f.vector IS NOT NULL
  GROUP BY f.model, f.layer, f.expert, f.feature),
ranked AS (
  SELECT 'down_meta' AS source, *, row_number() OVER (PARTITION BY model, layer ORDER BY score DESC, feature) AS rank
  FROM writes
  UNION ALL
  SELECT 'feature_acts' AS source, *, row_number() OVER (PARTITION BY model, layer
                                                         ORDER BY n DESC, abs(score) DESC, feature) AS rank
  FROM fires
  UNION ALL
  -- LarQL's gate KNN keeps the largest |score|
  SELECT 'gate' AS source, *, row_number() OVER (PARTITION BY model, layer ORDER BY abs(score) DESC, expert, feature)
         AS rank
  FROM gates)
SELECT r.model, r.layer, round(r.layer / m.m_layers, 3) AS depth, {BAND.format(d='r.layer / m.m_layers')} AS band,
       r.source, r.rank::INTEGER AS rank, r.expert, r.feature, r.score, r.n, l.label, l.l_c_score AS c_score,
       st.frequency, st.topk_frequency
FROM ranked AS r JOIN m ON m.m_model = r.model
LEFT JOIN labels AS l ON l.l_model = r.model AND l.l_layer = r.layer AND l.l_feature = r.feature
     AND l.l_expert IS NOT DISTINCT FROM r.expert
LEFT JOIN stats AS st ON st.s_model = r.model AND st.s_layer = r.layer AND st.s_feature = r.feature
     AND st.s_expert IS NOT DISTINCT FROM r.expert
WHERE r.rank <= k
ORDER BY r.model, r.layer, r.source, r.rank
"""

WALK = f"""
CREATE OR REPLACE MACRO walk(model_name, pid, token_at := NULL, set_name := NULL, k := {DEFAULT_K}) AS TABLE
WITH
spot AS (SELECT a.prompt_set AS at_set, coalesce(token_at, max(a.token_index)) AS at_index
       FROM feature_acts AS a WHERE a.model = model_name AND a.prompt_id = pid
            AND (set_name IS NULL OR a.prompt_set = set_name) GROUP BY a.prompt_set)
SELECT a.model, a.prompt_set, a.prompt_id, a.token_index, a.token, a.layer,
       round(a.layer / mm.n_layers, 3) AS depth, a.rank, a.expert, a.feature, a.activation,
       f.top_token AS label, f.c_score
FROM feature_acts AS a JOIN spot ON a.prompt_set = spot.at_set AND a.token_index = spot.at_index
JOIN models AS mm ON mm.model = a.model
LEFT JOIN features AS f ON f.model = a.model AND f.layer = a.layer AND f.feature = a.feature
     AND f.expert IS NOT DISTINCT FROM a.expert
WHERE a.model = model_name AND a.prompt_id = pid AND a.rank <= k
ORDER BY a.prompt_set, a.layer, a.rank
"""


def macros() -> list[str]:
    """The CREATE MACRO statements: describe, describe_all, walk (and the shared body they call)."""
    return [
        DESCRIBE_ROWS,
        # DESCRIBE is a DuckDB keyword: the macro's name is quoted, here and where it is called
        f'CREATE OR REPLACE MACRO "describe"(model_name, tok, k := {DEFAULT_K}) AS TABLE '

        "SELECT * FROM vindex_describe_rows(model_name, tok, k)",
        f"CREATE OR REPLACE MACRO describe_all(tok, k := {DEFAULT_K}) AS TABLE "
        "SELECT * FROM vindex_describe_rows(NULL, tok, k)",
        WALK,
    ]
