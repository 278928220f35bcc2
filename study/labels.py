"""Label FFN features with lexicon categories through their down_meta top token.

A feature f of a layer writes W_down[:, f] into the residual stream; its down_meta top token is
the vocabulary entry that direction promotes most (LarQL). When that token, normalised, is a
lexicon word (" Paris" -> "paris" -> cities), the feature gets that category; otherwise no label.

Tokens arrive in whatever form the tokenizer's vocabulary has them: GPT-2 style byte-level BPE
("Ġdog", "Ã©" for non-ASCII), SentencePiece ("▁dog") or already decoded (" dog"), so
`normalize_token` undoes each before comparing.
"""
from __future__ import annotations

from functools import lru_cache

import pyarrow as pa

from .lexicon import Lexicon, load_lexicon, normalize_word

SPACE_MARKERS = ("Ġ", "▁", " ")
# categories of countable nouns, where "dogs" should count as "dog"
PLURAL_CATEGORIES = frozenset({"animals", "body", "family", "food", "professions"})


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode (Radford et al. 2019, encoder.py): char -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _unbyte(token: str) -> str:
    """Decode a byte-level BPE piece ('Ã©' -> 'é'); anything that is not one comes back unchanged."""
    dec = _byte_decoder()
    if not token or not all(ch in dec for ch in token):
        return token
    try:
        return bytes(dec[ch] for ch in token).decode("utf-8")
    except UnicodeDecodeError:
        return token


def normalize_token(token: str | None) -> str:
    """A vocabulary token in the form lexicon words are kept: no space marker, case-folded.

    >>> normalize_token("ĠParis"), normalize_token("▁Paris"), normalize_token(" Paris")
    ('paris', 'paris', 'paris')
    """
    if not token:
        return ""
    t = _unbyte(token)
    while t and t[0] in SPACE_MARKERS:
        t = t[1:]
    return normalize_word(t)


def label_token(token: str | None, lexicon: Lexicon | None = None, *, plurals: bool = True) -> str | None:
    """The lexicon category of one token, or None.

    With plurals=True a regular English plural also matches ("dogs" -> animals), for the categories
    of countable nouns only (PLURAL_CATEGORIES), so "mars" does not become the month "mar".
    """
    lex = lexicon or default_lexicon()
    w = normalize_token(token)
    if not w:
        return None
    cat = lex.category(w)
    if cat is None and plurals and w.endswith("s") and len(w) >= 4:
        cat = lex.category(w[:-1])
        if cat not in PLURAL_CATEGORIES:
            cat = None
    return cat


def label_tokens(tokens, lexicon: Lexicon | None = None, *, plurals: bool = True) -> list[str | None]:
    lex = lexicon or default_lexicon()
    return [label_token(t, lex, plurals=plurals) for t in tokens]


def label_features(features: pa.Table, lexicon: Lexicon | None = None, *, column: str = "top_token",
                   plurals: bool = True) -> pa.Table:
    """`features` rows with a `category` column added (null where the top token is no lexicon word)."""
    if column not in features.column_names:
        raise KeyError(f"features table has no column {column!r} (has: {', '.join(features.column_names)})")
    cats = label_tokens(features.column(column).to_pylist(), lexicon, plurals=plurals)
    if "category" in features.column_names:
        features = features.drop_columns(["category"])
    return features.append_column("category", pa.array(cats, pa.string()))


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    return load_lexicon()
