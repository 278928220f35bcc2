"""DuckDB SQL over vindexes (installed as vindex.query). Never imports torch.

    from vindex.query import connect, cka_matrix
    con = connect("lake/")                     # vindex folders, lake roots, (hf:// with the Hub support)
    con.sql("SELECT * FROM cka_matrix('gemma3-270m', 'qwen2.5-0.5b', permutations := 99)").show()
    cka_matrix(con, "gemma3-270m", "qwen2.5-0.5b")   # the same, as a pyarrow Table

Modules: sources (finding vindexes), connect (views), functions + macros (the SQL functions),
cka (the math), cluster (k-means, NMI, AMI), knn (mutual k-NN), analyses (Python mirrors of the
table functions), feature_clusters (k-means of features scored against a column, as `vindex
cluster`), lake_cka (all-pairs CKA, optionally on Ray), plot (heatmaps). docs/sql.md documents
every view and function.
"""
from .analyses import cka_depth, cka_matrix, cka_token_matrix, kmeans, mutual_knn_matrix
from .analyses import rosetta
from .analyses import cka_influence, cka_influence_summary, stages
from .analyses import measure_depth
from .cka import minibatch_cka, permutation_test  # vindex.query.cka.cka: the module keeps its name
from .cluster import ami, nmi
from .views import connect
from .feature_clusters import FeatureClusters, cluster_features
from .knn import mutual_knn
from .sources import ResolvedVindex, resolve_source, resolve_sources

__all__ = ["connect", "cka_matrix", "cka_depth", "cka_token_matrix", "mutual_knn_matrix", "kmeans",
           "minibatch_cka", "permutation_test",
           "cka_influence", "cka_influence_summary", "stages", "mutual_knn", "nmi", "ami", "cluster_features", "FeatureClusters",
           "ResolvedVindex", "resolve_source", "resolve_sources"]
__all__ += ["measure_depth"]
__all__ += ["rosetta"]
