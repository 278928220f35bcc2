"""The study's lexicon and the top-token feature labels."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from vindex.errors import InvalidValue, NotFound
from vindex.study import Lexicon, label_features, label_token, load_lexicon, normalize_token


def test_shipped_lexicon_has_the_issue_categories_each_a_few_dozen_words():
    lex = load_lexicon()
    for cat in ("countries", "cities", "numbers", "months", "weekdays", "colours", "programming",
                "languages", "elements", "animals"):
        assert len(lex.categories[cat]) >= 30, cat
    # one category per word: the index holds every entry exactly once
    assert len(lex) == sum(len(ws) for ws in lex.categories.values())
    for cat, words in lex.categories.items():
        for w in words:
            assert w == w.casefold().strip() and " " not in w, (cat, w)


@pytest.mark.parametrize("token,expected", [
    ("ĠParis", "paris"), ("▁Paris", "paris"), (" Paris", "paris"), ("Paris", "paris"),
    ("ĠgrÃ¼n", "grün"),          # GPT-2 byte-level piece of " grün"
    ("▁weiß", "weiss"),           # case folding folds ß
    ("Ġ", ""), ("", ""), (None, ""),
    ("Ã", "ã"),                   # not a valid byte sequence: kept as written
])
def test_normalize_token(token, expected):
    assert normalize_token(token) == expected


@pytest.mark.parametrize("token,category", [
    ("ĠParis", "cities"), ("▁France", "countries"), ("ĠSeptember", "months"), (" Tuesday", "weekdays"),
    ("Ġseven", "numbers"), ("7", "numbers"), ("Ġcrimson", "colours"), ("def", "programming"),
    ("ĠSpanish", "languages"), ("▁oxygen", "elements"), ("Ġdogs", "animals"), ("Ġteachers", "professions"),
    ("Ġthe", None), ("Ġmars", None),   # "mars" must not become the month "mar"
    ("ĠMondays", None),                 # plurals only for countable-noun categories
])
def test_label_token(token, category):
    assert label_token(token) == category


def test_plurals_can_be_switched_off():
    assert label_token("Ġdogs", plurals=False) is None


def test_label_features_adds_a_category_column():
    t = pa.table({"feature": [0, 1, 2], "top_token": ["ĠLondon", "Ġof", None]})
    out = label_features(t)
    assert out.column("category").to_pylist() == ["cities", None, None]
    assert out.column_names == ["feature", "top_token", "category"]
    with pytest.raises(KeyError, match="top_tokens"):
        label_features(t, column="top_tokens")


def test_user_lexicon_from_json_and_folder(tmp_path):
    p = tmp_path / "lex.json"
    p.write_text(json.dumps({"fruit": ["Apple", "pear"], "tools": ["hammer"]}))
    lex = load_lexicon(p)
    assert label_token("▁APPLE", lex) == "fruit" and label_token("Ġhammer", lex) == "tools"
    folder = tmp_path / "lex"
    folder.mkdir()
    (folder / "metals.txt").write_text("# metals\niron\ncopper\n\n")
    assert load_lexicon(folder).categories == {"metals": ("iron", "copper")}


def test_lexicon_errors_name_the_problem(tmp_path):
    with pytest.raises(InvalidValue, match="'turkey' is in both 'countries' and 'animals'"):
        Lexicon.from_dict({"countries": ["turkey"], "animals": ["turkey"]})
    with pytest.raises(InvalidValue, match="not one word"):
        Lexicon.from_dict({"cities": ["new york"]})
    with pytest.raises(NotFound, match="no such lexicon"):
        load_lexicon(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(InvalidValue, match="object"):
        load_lexicon(bad)
