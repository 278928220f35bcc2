"""Connecting to Ray, for the distributed paths (`vindex.ingest.on_ray`, `vindex.query.lake_cka`).

Ray is an optional extra (`pip install 'vindex-lake[distributed]'`); nothing here imports it at
module level, so core stays light. Which cluster a job runs on:

    address None, True or ""  ray.init(): RAY_ADDRESS when set (inside `ray job submit` it is), else
                              a cluster started with `ray start --head` on this machine, else a new
                              local one
    "local"                   always a new single-machine cluster (ignores RAY_ADDRESS)
    "auto"                    the cluster started on this machine; an error when there is none
    "ray://head:10001"        a remote cluster through Ray Client
    "10.0.0.5:6379"           join a cluster's GCS directly (the driver must run on a cluster node)

When Ray is already initialised in this process (a notebook, the tests, a Ray job) it is reused
as it is, and `runtime_env` must then be given to `ray.init` by whoever started it.
"""
from __future__ import annotations

from .errors import RayUnavailable, VindexError

EXTRA_HINT = "pip install 'vindex-lake[distributed]' (Ray 2.60 with Ray Data)"


def require_ray():
    """The `ray` module, or a clear error saying which extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without [data] lacks it)
    except ImportError as e:
        raise RayUnavailable(f"the distributed paths need Ray and Ray Data ({e}); {EXTRA_HINT}") from None
    return ray


def connect_ray(address=None, *, runtime_env: dict | None = None, quiet: bool = False):
    """Initialise Ray once for this process (see the module doc for `address`); returns `ray`.

    runtime_env: what workers need that the cluster lacks, e.g. {"pip": ["vindex-lake[distributed]"]}
    or {"env_vars": {"HF_TOKEN": ...}} (ignored, with no error, when Ray is already initialised).
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address is True or address == "":
        address = None
    if address is not None and not isinstance(address, str):
        raise VindexError(f"ray address must be a string such as 'ray://head:10001', 'auto' or 'local'; "
                          f"got {address!r}")
    kwargs = {"address": address, "ignore_reinit_error": True, "log_to_driver": not quiet}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address in (None, "local"):
        kwargs["include_dashboard"] = False   # a local cluster for one job: no web UI to start
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayUnavailable(f"cannot start or join the Ray cluster at {address or 'RAY_ADDRESS/local'}: {e}") from None
    return ray


def cluster_resources() -> dict:
    """CPUs and GPUs the connected cluster has in total ({'CPU': 2.0, 'GPU': 0.0, ...})."""
    ray = require_ray()
    res = dict(ray.cluster_resources())
    res.setdefault("CPU", 1.0)
    res.setdefault("GPU", 0.0)
    return res


def raise_vindex_cause(e: BaseException) -> None:
    """Ray wraps a worker's exception (RayTaskError, Ray Data's UserCodeException): re-raise the
    VindexError inside, if any, so callers and the CLI get its clear message, not Ray's wrapping.
    Returns (and the caller re-raises `e`) when there is none."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, VindexError):
            raise e.with_traceback(None) from None
        e = getattr(e, "cause", None) or e.__cause__
