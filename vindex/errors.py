"""Every error and warning vindex raises, in one hierarchy.

Every error names the file (and, where it applies, the column or argument) so that a user
can find the problem without reading a pyarrow traceback. Catch `VindexError` to catch them all.

    VindexError
      ManifestError            vindex.json missing, unreadable or invalid
        UnsupportedSchemaVersion
      UnsafePath               a path escapes the vindex folder
      ChecksumError            bytes do not match the manifest
      CorruptShard             a shard is not readable Parquet
      SchemaMismatch           rows do not match the table schema
      InvalidValue             a value out of its domain (NaN, a bad layer, an unknown option)
        UnsupportedArchitecture    a model type vindex cannot ingest
        UnsupportedWeights         a checkpoint layout with no tensor-name map
        DegenerateInput            input a measure is undefined on (e.g. a constant layer)
        UnknownSite                an activation site vindex does not know, or the model lacks
        NotMoE                     an MoE option (routing) on a model without experts
        ResumeMismatch             a resumed build's arguments differ from the earlier build's (it says what changed)
        DeviceUnavailable          a device that is not there (--device cuda without CUDA)
      MissingProvenance        a model object lacks what vindex must record and will not guess (a tokenizer, a name)
      IncompleteData           an analysis would use part of the data (an interrupted build);
                               allow_partial accepts it
      NotFound                 a model, table, layer or file that is not there
      ModelSourceError         a model source cannot be resolved or loaded
      WeightsError             a checkpoint is unreadable or lacks a tensor
      LarqlFormatError         a LarQL file is malformed or inconsistent
      HubError                 the Hub (or the network) refused or failed a request
      RayUnavailable           Ray is missing or the cluster is unreachable
      VindexBusy               another writer holds the vindex's write lock (the message names it)
    VindexWarning (UserWarning)
      CKAWarning               a CKA value is undefined and was returned as NULL
      CKAPairSkipped           a model pair of a lake could not be compared; the run went on
      PartialData              a result was computed over part of the data (allow_partial)
      GramCacheRebuilt         a Gram cache entry failed its check (sha256, shape) and was rebuilt, not used
      MeasureWarning           a measure was computed on reduced input (SVCCA/PWCCA's truncation capped)
      LarqlImportWarning       a LarQL import went on without part of its source (it says what)
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


class UnsupportedArchitecture(InvalidValue):
    """The model's architecture is not one vindex knows how to ingest."""


class UnsupportedWeights(InvalidValue):
    """The architecture has no tensor-name map here."""


class DegenerateInput(InvalidValue):
    """The input is one a measure is undefined on (e.g. a constant layer, fewer than 2 rows)."""


class UnknownSite(InvalidValue):
    """An activation site name vindex does not know, or one the model's family does not have."""


class NotMoE(InvalidValue):
    """An MoE option (routing) was given for a model whose family has no experts."""


class ResumeMismatch(InvalidValue):
    """A build would resume one made with other arguments (other sites, layers, prompts ...); the message
    says what changed and offers resume=False (--no-resume)."""


class DeviceUnavailable(InvalidValue):
    """The device asked for is not available here (e.g. --device cuda on a machine without CUDA)."""


class MissingProvenance(VindexError):
    """A model object lacks something vindex must record and will not guess: its tokenizer, or a name."""


class IncompleteData(VindexError):
    """An analysis would run on part of its data: a prompt set whose build was cut off, or prompts only
    one model holds. Pass allow_partial (SQL `allow_partial := true`, CLI `--allow-partial`) to accept."""


class ModelSourceError(VindexError):
    """A model source cannot be resolved or loaded (missing file, offline Hub, bad checksum)."""


class WeightsError(VindexError):
    """A checkpoint is unreadable or lacks a tensor its architecture needs."""


class LarqlFormatError(VindexError):
    """A LarQL file is missing, truncated, malformed or inconsistent with index.json."""


class HubError(VindexError):
    """The Hub (or the network) refused or failed a request; the message says which and why."""


class RayUnavailable(VindexError):
    """Ray (the `distributed` extra) is not installed, or the cluster cannot be reached."""


class VindexBusy(VindexError):
    """Another writer held the vindex's write lock past the wait allowed; the message names it (pid, host, command)."""


class VindexWarning(UserWarning):
    """Base class of vindex's warnings: a result was computed without some of its input."""


class CKAWarning(VindexWarning):
    """A CKA value is undefined (e.g. a constant layer) and was returned as NULL/None."""


class CKAPairSkipped(VindexWarning):
    """A model pair (or a model) of the lake could not be compared; the run goes on without it."""


class PartialData(VindexWarning):
    """A result was computed over part of the data (allow_partial): the message says how many rows."""


class MeasureWarning(VindexWarning):
    """A measure was computed on reduced input: SVCCA/PWCCA kept fewer SVD directions than asked (n <= d); the
    message says how many."""


class GramCacheRebuilt(VindexWarning):
    """A stored Gram cache entry failed its check (sha256, spec or shape): it was not used, and was
    computed again from the shards; the message names the file."""


class LarqlImportWarning(VindexWarning):
    """A LarQL import went on without part of its source (unparseable labels, no down_meta); the message says what."""


def error_from_message(message: str, functions: tuple[str, ...] = ()) -> VindexError | None:
    """The vindex error a wrapped message carries, or None. DuckDB wraps what a Python UDF raises as
    "... while executing the UDF: ChecksumError: <msg>", and a SQL macro's own check raises
    "<function>: <msg>" (given in `functions`): the Python mirrors re-raise them in their own class,
    so `except VindexError` catches what a query refused."""
    import re

    text = str(message).split("\n\nAt:")[0].strip()
    m = re.search(r"while executing the UDF: (\w+): (.*)", text, re.S)
    if m:
        cls = globals().get(m.group(1))
        if isinstance(cls, type) and issubclass(cls, VindexError):
            return cls(m.group(2).strip())
    body = re.sub(r"^[\w ]*Error: ", "", text)
    if functions and body.startswith(tuple(f"{f}:" for f in functions)):
        return IncompleteData(body) if "allow_partial" in body else InvalidValue(body)
    return None
