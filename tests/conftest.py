"""Shared fixtures: a toy vindex (toy_lakes), the local Hub, one local Ray, the study's lake (study_lake)."""
from __future__ import annotations

import gc
import os
import subprocess

import pytest

from hub_server import hub_server, hub_server_session  # noqa: F401  (local Hub for hf:// tests)
from toy_lakes import write_toy_vindex


@pytest.fixture
def toy_vindex(tmp_path):
    return write_toy_vindex(tmp_path / "toy")


@pytest.fixture(scope="session")
def study_build(tmp_path_factory):
    """The lake `vindex study --prompts heldout --no-causal` builds (tests/study_lake.py), once per
    session on the real models, or $VINDEX_STUDY_LAKE's; skipped when a model package is absent."""
    from real_models import require_model_package
    from study_lake import PACKAGES, build_study_lake, reused_build
    for package, dist in PACKAGES:
        require_model_package(package, dist)
    return reused_build() or build_study_lake(tmp_path_factory.mktemp("study-build"))


@pytest.fixture
def study_lake(study_build, tmp_path):
    """A copy of the study's build in tmp_path (lake/ and study-report/), tmp_path as the working
    folder, so that docs examples say `lake` as a user who ran `vindex study` would; returns tmp_path."""
    from study_lake import copy_study_lake
    copy_study_lake(study_build, tmp_path)
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, no dashboard) for every distributed test: Ray starts in 10-20 s on 2
    cores, so it starts once. Skipped, with the reason, when the `distributed` extra is absent."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'vindex-lake[distributed]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'vindex-lake[distributed]'")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_kib) -> a fresh tmpfs of that size; resize(kib); grow() -> 64 MiB; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs, and mounting one needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()

    def mount(kib: int):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mnt)],
                           capture_output=True, text=True, check=False)
        if r.returncode:
            pytest.skip(f"`mount -t tmpfs` is not allowed here: {r.stderr.strip()}")
        return mnt

    def resize(kib):
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mnt)], check=True)

    def grow():
        resize(64 * 1024)
    try:
        yield mount, resize, grow
    finally:
        gc.collect()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
