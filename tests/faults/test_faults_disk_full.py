"""A full disk in the middle of `vindex build`, `weights` and `pull`: one `error:` line (exit 1),
never a traceback; what was committed stays sound; once there is space, the same command resumes to
exactly the content of an uninterrupted run.

The disk is a real tmpfs, mounted for each case at a random size (seeded) between a few pages and
what the whole run needs, so it fills up at a random point. Mounting needs root and a kernel that
allows it here: otherwise the cases are skipped, with the reason.
"""
from __future__ import annotations

import os
import shutil

import pytest

import fault_child
import fault_harness as fh
from fault_child import build_argv, weights_argv

GROUP = "disk full"
N = {op: fh.count(f"disk_{op}") for op in ("build", "weights", "pull")}
REPO = "vindex-org/disk"
PAGE = 4096

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")


def _need_kb(root) -> int:
    """What a folder occupies on a tmpfs (whole pages per file and folder), in KiB."""
    n = 0
    for p in [root, *root.rglob("*")]:
        n += PAGE if p.is_dir() else -(-p.stat().st_size // PAGE) * PAGE
    return n // 1024




def _resumed(v: fh.Verdict, out, reference, run) -> None:
    from vindex import verify
    if v.cli("rerun with space", run):
        v.content("rerun: shards (rows, sha256)", fh.digest(out), fh.digest(reference))
        problems = verify(out)
        if problems:
            v.note(fh.DATA_LOST, f"rerun: verify finds {len(problems)} problem(s): {problems[0]}")


def _full_run(v: fh.Verdict, run) -> None:
    """The run on the full disk: one error line (or, if it fit after all, exit 0)."""
    v.cli("run on the small disk", run)


@pytest.mark.parametrize("i", range(N["build"]))
def test_disk_full_during_build(verdict, tiny, references, small_disk, tmp_path, i):
    mount, _, grow = small_disk
    ref = references("build")
    kib = fh.rng("disk", "build", i).randint(8, _need_kb(ref.root) * 3 // 4)
    verdict.injected(f"vindex build onto a {kib} KiB tmpfs (the build needs about {_need_kb(ref.root)} KiB)")
    out = mount(kib) / "vx"
    _full_run(verdict, fault_child.fork(build_argv(tiny, out), 0, tmp_path, "full"))
    fh.committed_files_sound(verdict, out, "the failure")
    grow()
    _resumed(verdict, out, ref.root, fault_child.fork(build_argv(tiny, out), 0, tmp_path, "rerun"))
    verdict.done()


@pytest.mark.parametrize("i", range(N["weights"]))
def test_disk_full_during_weights(verdict, tiny, references, small_disk, tmp_path, i):
    mount, resize, grow = small_disk
    base, ref = references("build"), references("weights")
    more = _need_kb(ref.root) - _need_kb(base.root)
    out = mount(64 * 1024) / "vx"
    shutil.copytree(base.root, out)
    st = os.statvfs(out)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024
    extra = fh.rng("disk", "weights", i).randint(4, more * 3 // 4)
    resize(used + extra)
    verdict.injected(f"vindex weights onto a tmpfs holding the build ({used} KiB) with {extra} KiB free "
                     f"(the weight tables need about {more} KiB)")
    _full_run(verdict, fault_child.fork(weights_argv(tiny, out), 0, tmp_path, "full"))
    fh.committed_files_sound(verdict, out, "the failure")
    grow()
    _resumed(verdict, out, ref.root, fault_child.fork(weights_argv(tiny, out), 0, tmp_path, "rerun"))
    verdict.done()


@pytest.mark.parametrize("i", range(N["pull"]))
def test_disk_full_during_pull(verdict, hub_server, small_disk, tmp_path, i):
    from click.testing import CliRunner

    from toy_lakes import write_toy_vindex
    from vindex.cli import main
    from vindex.hub import publish
    mount, _, grow = small_disk
    source = write_toy_vindex(tmp_path / "toy", n_layers=5)
    publish(source, REPO, progress=False)
    need = _need_kb(source)
    kib = fh.rng("disk", "pull", i).randint(8, need * 3 // 4)
    verdict.injected(f"vindex pull onto a {kib} KiB tmpfs (the vindex needs about {need} KiB)")
    out = mount(kib) / "pulled"
    argv = ["pull", f"hf://datasets/{REPO}", "--out", str(out), "--quiet"]
    _full_run(verdict, CliRunner().invoke(main, argv))
    fh.committed_files_sound(verdict, out, "the failure")
    grow()
    _resumed(verdict, out, source, CliRunner().invoke(main, argv))
    verdict.done()
