"""The error types vindex raises.

Every error names the file (and, where it applies, the column or argument) so that a user
can find the problem without reading a pyarrow traceback. Catch `VindexError` to catch them all.
"""


class VindexError(Exception):
    """Base class: anything wrong with a vindex, its inputs or its arguments."""


class ManifestError(VindexError):
    """vindex.json is missing, unreadable, or does not match schemas/vindex.schema.json."""


class UnsupportedSchemaVersion(ManifestError):
    """The manifest was written by a format version this reader does not know."""


class UnsafePath(VindexError):
    """A path in a manifest (or a download) would escape the vindex folder."""


class ChecksumError(VindexError):
    """A file's sha256 (or size) does not match what its manifest records."""


class CorruptShard(VindexError):
    """A Parquet shard cannot be read: truncated, overwritten or not Parquet at all."""


class SchemaMismatch(VindexError):
    """Rows or a shard do not match the table schema: a missing column, wrong type or vector width."""


class InvalidValue(VindexError):
    """A value is out of its domain: NaN/inf in a vector, a negative layer, an unknown option."""


class NotFound(VindexError):
    """A model, table, layer or file that was asked for is not there."""
