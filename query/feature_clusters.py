"""k-means over a model's feature vectors, summarised per layer and scored against a features
column (NMI, AMI): what `vindex cluster` prints, as Python.

    from vindex.query import cluster_features
    clusters, summary = cluster_features("lake/", "gemma3-270m", layer=9, k=32, against="label")
    clusters   # one row per feature: the `kmeans` table function's columns
    summary    # one row per layer: clusters, features, inertia (+ labelled, nmi, ami with `against`)
"""
from __future__ import annotations

import uuid
from typing import NamedTuple

import pyarrow as pa

from vindex.errors import InvalidValue

from .analyses import connection, kmeans
from .sqltext import ident


class FeatureClusters(NamedTuple):
    clusters: pa.Table   # one row per feature (model, layer, expert, feature, cluster, distance, inertia, k, seed)
    summary: pa.Table    # one row per layer, ordered by layer


def cluster_features(con_or_sources, model: str, layer: int | None = None, k: int = 8, seed: int = 0,
                     max_iter: int = 300, against: str | None = None) -> FeatureClusters:
    """k-means (`kmeans`: k-means++ seeded by `seed`) over `model`'s features.vector, each layer
    separately (or only `layer`), and a per-layer summary: `layer`, `clusters` (distinct clusters
    found), `features`, `inertia`; with `against` (a features column such as label) also
    `labelled` (features where that column is not NULL), `nmi` and `ami` between the column and
    the clusters over those features; a layer without labelled features gets NULL for all three.
    """
    con = connection(con_or_sources)
    if against is not None:
        columns = [r[0] for r in con.execute("DESCRIBE features").fetchall()]
        if against not in columns:
            raise InvalidValue(f"against: features has no column {against!r} (it has: {', '.join(columns)})")
    clusters = kmeans(con, model, layer=layer, k=k, seed=seed, max_iter=max_iter)
    view = f"vindex_clusters_{uuid.uuid4().hex}"   # registered for this call only
    con.register(view, clusters)
    try:
        summary = (f"SELECT layer, count(DISTINCT cluster) AS clusters, count(*) AS features, "
                   f"any_value(inertia) AS inertia FROM {view} GROUP BY layer")
        if against is not None:
            col, order = f"f.{ident(against)}", "c.expert NULLS FIRST, c.feature"
            scores = (f"SELECT c.layer, count(*) AS labelled, "
                      f"nmi(list({col} ORDER BY {order}), list(c.cluster ORDER BY {order})) AS nmi, "
                      f"ami(list({col} ORDER BY {order}), list(c.cluster ORDER BY {order})) AS ami "
                      f"FROM {view} AS c JOIN features AS f ON f.model = c.model AND f.layer = c.layer "
                      "AND f.feature = c.feature AND f.expert IS NOT DISTINCT FROM c.expert "
                      f"WHERE {col} IS NOT NULL GROUP BY c.layer")
            summary = f"SELECT * FROM ({summary}) LEFT JOIN ({scores}) USING (layer)"
        table = con.execute(summary + " ORDER BY layer").to_arrow_table()
    finally:
        con.unregister(view)
    return FeatureClusters(clusters, table)
