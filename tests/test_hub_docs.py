"""docs/hub.md's examples run as written against the local Hub (tests/hub_server.py), on a copy of the
lake `vindex study --prompts heldout --no-causal` builds (tests/study_lake.py): publish the real
smollm2-135m vindex, pull layers of it, query it in place (with the local gemma3-270m), and read it
with plain DuckDB over HfFileSystem; the results the page shows are checked.

    python tests/test_hub_docs.py --update     # rewrite the shown results ($VINDEX_STUDY_LAKE's build, or
                                               # one made now), against a local Hub started for it
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from docs_examples import run_doc_checked
from vindex import Vindex, verify
from vindex.hub.remote import cache_root

DOC = Path(__file__).resolve().parents[1] / "docs" / "hub.md"
AT_LEAST = {"python": 5, "console": 3, "sql": 1, "text": 7}
MASKS = (r"http://127\.0\.0\.1:\d+", r"\b[0-9a-f]{12}\b",   # the local Hub's address, commit ids,
         r"\S+/vindex/hub")                                      # the test's $VINDEX_CACHE
UPDATE = "VINDEX_DOCS_UPDATE"     # set by --update below: the test rewrites the shown results
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # inside huggingface_hub


def run_sql(code: str) -> str:
    """The page's plain-DuckDB block, with huggingface_hub's filesystem for hf:// (no vindex involved)."""
    import duckdb
    import huggingface_hub
    con = duckdb.connect()
    con.register_filesystem(huggingface_hub.HfFileSystem())
    return str(con.sql(code))


@pytest.mark.integration
def test_docs_examples_run_on_the_study_lake_and_show_their_results(hub_server, study_lake):
    from huggingface_hub import HfApi
    hub_server.orgs.add("my-org")
    _, problems = run_doc_checked(DOC, update=bool(os.environ.get(UPDATE)), at_least=AT_LEAST,
                                  other={"sql": run_sql}, masks=MASKS)
    assert not problems, "\n".join(problems) + "\nafter a deliberate change: python tests/test_hub_docs.py --update"
    assert verify(study_lake / "pulled" / "smollm2") == []
    cached = cache_root() / "datasets" / "my-org" / "smollm2-135m-vindex" / "main"
    assert Vindex.open(cached).layers("pooled") == [0, 1, 2, 3] and verify(cached) == []
    # the repo holds the local vindex, file for file
    local = Vindex.open(study_lake / "lake" / "smollm2-135m")
    held = set(HfApi().list_repo_files("my-org/smollm2-135m-vindex", repo_type="dataset"))
    assert {f["path"] for t in local.manifest["tables"].values() for f in t["files"]} <= held


if __name__ == "__main__":     # the update runs the test itself, for its local Hub and study lake fixtures
    os.environ[UPDATE] = "1" if "--update" in sys.argv else ""
    sys.exit(pytest.main([__file__, "-q", "-x", "-k", "show_their_results"]))
