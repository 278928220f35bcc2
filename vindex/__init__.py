"""vindex: a Parquet data lake of transformer internals, queryable with DuckDB.

    import vindex
    vx = vindex.Vindex.open("lake/smollm2-135m")
    vx.tables, vx.layers("activations"), vx.read("pooled", layers=[3])
    vindex.verify("lake/smollm2-135m")    # problems as a list; the CLI exits non-zero on any

Building vindexes lives in `vindex.ingest`, querying in `vindex.query`.
"""
from .version import __version__  # noqa: E402

from .errors import (ChecksumError, CorruptShard, InvalidValue, ManifestError, NotFound,  # noqa: E402
                     SchemaMismatch, UnsafePath, UnsupportedSchemaVersion, VindexError)
from .reader import Vindex  # noqa: E402
from .writer import VindexWriter  # noqa: E402
from .integrity import Problem, verify  # noqa: E402
from .summary import info  # noqa: E402

__all__ = ["Vindex", "VindexWriter", "verify", "Problem", "info", "VindexError", "ManifestError",
           "UnsupportedSchemaVersion", "UnsafePath", "ChecksumError", "CorruptShard",
           "SchemaMismatch", "InvalidValue", "NotFound", "__version__"]
