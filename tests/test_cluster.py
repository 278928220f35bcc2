"""k-means, NMI and AMI against scikit-learn; kmeans() in SQL joins back to features."""
import numpy as np
import pytest

from vindex import InvalidValue, VindexWriter
from vindex.query import cluster, connect
from vindex.query import kmeans as kmeans_table

sklearn_cluster = pytest.importorskip("sklearn.cluster")
sklearn_metrics = pytest.importorskip("sklearn.metrics")


def blobs(n=300, d=6, k=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 4
    return centres[rng.integers(k, size=n)] + rng.standard_normal((n, d))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_sklearn_with_the_same_init(seed):
    X = blobs(seed=seed)
    init = cluster.kmeans_plusplus(X - X.mean(0), 5, seed) + X.mean(0)
    ours = cluster.kmeans(X, 5, init=init)
    ref = sklearn_cluster.KMeans(5, init=init, n_init=1, algorithm="lloyd", tol=1e-4, max_iter=300).fit(X)
    np.testing.assert_array_equal(ours.labels, ref.labels_)
    np.testing.assert_allclose(ours.centers, ref.cluster_centers_, atol=1e-6)
    assert abs(ours.inertia - ref.inertia_) < 1e-6 * ref.inertia_
    np.testing.assert_allclose(ours.distances ** 2, ((X - ref.cluster_centers_[ref.labels_]) ** 2).sum(1), atol=1e-6)
    # seeding from k-means++ (no init given) is deterministic in the seed
    a, b = cluster.kmeans(X, 5, seed=seed), cluster.kmeans(X, 5, seed=seed)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_kmeans_hard_case_matches_sklearn():
    # overlapping clusters, many iterations
    rng = np.random.default_rng(5)
    X = rng.standard_normal((500, 3))
    init = X[rng.choice(500, 8, replace=False)]
    ours = cluster.kmeans(X, 8, init=init, max_iter=500)
    ref = sklearn_cluster.KMeans(8, init=init, n_init=1, algorithm="lloyd", max_iter=500).fit(X)
    np.testing.assert_array_equal(ours.labels, ref.labels_)
    assert abs(ours.inertia - ref.inertia_) < 1e-6 * ref.inertia_


def test_kmeans_plusplus_seeding_is_good():
    X = blobs(n=600, k=6, seed=3)
    ours = cluster.kmeans(X, 6, seed=0)
    ref = sklearn_cluster.KMeans(6, n_init=10, random_state=0).fit(X)
    assert ours.inertia <= 1.05 * ref.inertia_
    assert sklearn_metrics.adjusted_rand_score(ours.labels, ref.labels_) > 0.95


def test_kmeans_errors():
    with pytest.raises(InvalidValue, match="k must be between 1 and"):
        cluster.kmeans(np.zeros((3, 2)), 5)
    with pytest.raises(InvalidValue, match="NaN"):
        cluster.kmeans(np.array([[np.nan, 1.0], [1.0, 2.0]]), 1)


@pytest.mark.parametrize("seed", range(4))
def test_nmi_ami_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = [20, 200, 1000, 57][seed]
    a = rng.integers(0, [3, 7, 20, 2][seed], n)
    b = np.where(rng.random(n) < 0.6, a, rng.integers(0, 5, n))
    assert abs(cluster.nmi(a, b) - sklearn_metrics.normalized_mutual_info_score(a, b)) < 1e-9
    assert abs(cluster.ami(a, b) - sklearn_metrics.adjusted_mutual_info_score(a, b)) < 1e-9
    s = np.array([f"cat{v}" for v in a], dtype=object)
    assert abs(cluster.ami(s, b) - sklearn_metrics.adjusted_mutual_info_score(s, b)) < 1e-9


def test_nmi_ami_edge_cases_match_sklearn():
    cases = [([0, 0, 0], [1, 1, 1]), ([0, 1, 2], [0, 1, 2]), ([0, 0, 1, 1], [0, 1, 0, 1]), ([0, 0, 0, 0], [0, 1, 2, 3]),
             (["x", "x", "y"], [5, 5, 5])]
    for a, b in cases:
        assert abs(cluster.nmi(a, b) - sklearn_metrics.normalized_mutual_info_score(a, b)) < 1e-9, (a, b)
        assert abs(cluster.ami(a, b) - sklearn_metrics.adjusted_mutual_info_score(a, b)) < 1e-9, (a, b)
    with pytest.raises(InvalidValue, match="differ in length"):
        cluster.nmi([0, 1], [0, 1, 2])


# -- SQL ----------------------------------------------------------------------------------------
@pytest.fixture
def feature_lake(tmp_path):
    """A vindex whose features carry vectors (two layers) and a label for half of them."""
    rng = np.random.default_rng(0)
    w = VindexWriter.create(tmp_path / "f", "feat", {"id": "t/feat", "n_layers": 2, "d_model": 6})
    w.declare_vectors("features", 6, "float32")
    for layer in (1, 2):
        X = blobs(n=60, d=6, k=4, seed=layer)
        w.write_shard("features", {"feature": np.arange(60), "vector": X.astype(np.float32),
                                   "label": [("even" if i % 2 == 0 else "odd") if i < 30 else None for i in range(60)]},
                      partition={"layer": layer})
    return tmp_path / "f"


def test_kmeans_sql_matches_python_and_joins_back(feature_lake):
    con = connect(feature_lake)
    rows = con.sql("SELECT layer, feature, cluster, distance FROM kmeans('feat', layer := 2, k := 4, seed := 3)").fetchall()
    assert [r[1] for r in rows] == list(range(60)) and {r[0] for r in rows} == {2}
    X = np.stack(con.sql("SELECT vector FROM features WHERE layer = 2 ORDER BY feature").fetchnumpy()["vector"])
    ref = cluster.kmeans(X.astype(np.float64), 4, seed=3)
    assert [r[2] for r in rows] == ref.labels.tolist()
    np.testing.assert_allclose([r[3] for r in rows], ref.distances, atol=1e-9)
    # join back to features; all layers when layer is omitted; the Python mirror gives the same table
    joined = con.sql("SELECT count(*) FROM kmeans('feat', k := 4) AS k JOIN features AS f USING (model, layer, feature)")
    assert joined.fetchone()[0] == 120
    t = kmeans_table(con, "feat", layer=2, k=4, seed=3)
    assert t.column("cluster").to_pylist() == ref.labels.tolist()


def test_nmi_ami_in_sql(feature_lake):
    con = connect(feature_lake)
    got = con.sql("""
        SELECT nmi(list(f.label ORDER BY f.feature), list(k.cluster ORDER BY f.feature)),
               ami(list(f.label ORDER BY f.feature), list(k.cluster ORDER BY f.feature)),
               list(f.label ORDER BY f.feature), list(k.cluster ORDER BY f.feature)
        FROM kmeans('feat', layer := 1, k := 4) AS k JOIN features AS f USING (model, layer, feature)
        WHERE f.label IS NOT NULL""").fetchone()
    assert abs(got[0] - sklearn_metrics.normalized_mutual_info_score(got[2], got[3])) < 1e-9
    assert abs(got[1] - sklearn_metrics.adjusted_mutual_info_score(got[2], got[3])) < 1e-9
    labels = con.sql("SELECT kmeans_labels(list(vector ORDER BY feature), 4, 3) FROM features WHERE layer = 2").fetchone()[0]
    X = np.stack(con.sql("SELECT vector FROM features WHERE layer = 2 ORDER BY feature").fetchnumpy()["vector"])
    assert labels == cluster.kmeans(X.astype(np.float64), 4, seed=3).labels.tolist()


def test_kmeans_sql_errors(feature_lake):
    import duckdb
    con = connect(feature_lake)
    with pytest.raises(duckdb.Error, match="unknown model 'nope'; the lake holds: feat"):
        con.sql("SELECT * FROM kmeans('nope', k := 2)").fetchall()
    with pytest.raises(duckdb.Error, match="has no features rows with a feature vector in layer 7"):
        con.sql("SELECT * FROM kmeans('feat', layer := 7)").fetchall()
    with pytest.raises(duckdb.Error, match="k must be between 1 and the number of vectors"):
        con.sql("SELECT * FROM kmeans('feat', layer := 1, k := 100)").fetchall()


def test_cluster_features_is_the_cli_summary(feature_lake):
    from vindex.query import cluster_features
    con = connect(feature_lake)
    clusters, summary = cluster_features(con, "feat", k=4, seed=3, against="label")
    assert clusters.equals(kmeans_table(con, "feat", k=4, seed=3))
    rows = summary.to_pylist()
    assert [r["layer"] for r in rows] == [1, 2]
    for r in rows:
        mine = [c for c in clusters.to_pylist() if c["layer"] == r["layer"]]
        labels = [("even" if c["feature"] % 2 == 0 else "odd") for c in mine if c["feature"] < 30]
        got = [c["cluster"] for c in mine if c["feature"] < 30]
        assert (r["features"], r["labelled"], r["clusters"]) == (60, 30, len({c["cluster"] for c in mine}))
        assert abs(r["inertia"] - mine[0]["inertia"]) < 1e-12
        assert abs(r["nmi"] - sklearn_metrics.normalized_mutual_info_score(labels, got)) < 1e-9
        assert abs(r["ami"] - sklearn_metrics.adjusted_mutual_info_score(labels, got)) < 1e-9
    # without `against`: no scores; a column NULL in every row: NULL scores; the sources work too
    assert cluster_features(feature_lake, "feat", layer=2, k=4).summary.column_names == \
        ["layer", "clusters", "features", "inertia"]
    empty = cluster_features(con, "feat", layer=2, k=4, against="top_token").summary.to_pylist()
    assert [(r["labelled"], r["nmi"], r["ami"]) for r in empty] == [(None, None, None)]
    with pytest.raises(InvalidValue, match="against: features has no column 'colour'"):
        cluster_features(con, "feat", against="colour")
    assert "vindex_clusters" not in str(con.sql("SHOW TABLES").fetchall())   # nothing left registered
