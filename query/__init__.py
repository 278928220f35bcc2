"""DuckDB SQL over vindexes (installed as vindex.query). Never imports torch.

    from vindex.query import connect
    con = connect("lake/")
    con.sql("SELECT * FROM cka_matrix('gemma3-270m', 'qwen2.5-0.5b', permutations := 99)").show()
"""
from .connect import connect
from .sources import ResolvedVindex, resolve_source, resolve_sources

__all__ = ["connect", "ResolvedVindex", "resolve_source", "resolve_sources"]
