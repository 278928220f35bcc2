"""Layers side by side: a thread per layer, BLAS single-threaded inside each.

Small GEMMs (n x d with n ~ 256) gain nothing from a multi-threaded BLAS and, next to DuckDB's own
threads, spin at its barriers (10x slower than one thread on a busy 2-core machine); numpy releases
the GIL in GEMMs and array arithmetic, so layers on threads really run in parallel.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

_BLAS = {"controller": None, "depth": 0, "limiter": None, "lock": threading.Lock()}


@contextlib.contextmanager
def single_threaded_blas():
    """Context limiting BLAS to one thread. A UDF runs inside DuckDB's worker threads, next to
    DuckDB's other work: multi-threaded BLAS on these small GEMMs (n x d with n ~ 256) then spins at
    its barriers (10x slower than one thread on a busy 2-core machine). Layers run in parallel
    instead (map_layers). Re-entrant across DuckDB's threads (the last one out restores BLAS);
    without threadpoolctl it does nothing."""
    state = _BLAS
    with state["lock"]:
        if state["controller"] is None:
            try:
                from threadpoolctl import ThreadpoolController
                state["controller"] = ThreadpoolController()
            except ImportError:
                state["controller"] = False
        if state["controller"] and state["depth"] == 0:
            state["limiter"] = state["controller"].limit(limits=1, user_api="blas")
        state["depth"] += 1
    try:
        yield
    finally:
        with state["lock"]:
            state["depth"] -= 1
            if state["depth"] == 0 and state["limiter"] is not None:
                state["limiter"].restore_original_limits()
                state["limiter"] = None


def map_layers(fn, items) -> list:
    """[fn(x) for x in items], on up to cpu_count threads with single-threaded BLAS (numpy releases
    the GIL in GEMMs and array arithmetic, so layers really run side by side)."""
    items = list(items)
    with single_threaded_blas():
        if len(items) < 2 or (os.cpu_count() or 1) < 2:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(len(items), os.cpu_count() or 1)) as pool:
            return list(pool.map(fn, items))
