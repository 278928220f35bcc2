"""The examples of docs/interventions.md run as written (console, python and sql blocks in order), with a
tiny random 4-layer Llama standing in for smollm2-135m whose tokenizer is trained on the shipped pairs (so
every answer is one token); each sql block's result is the table the page shows under it.

    python tests/test_interventions_docs.py --update     # rewrite the result tables after a deliberate change
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from docs_examples import run_doc_examples

DOC = Path(__file__).resolve().parents[1] / "docs" / "interventions.md"
STANDIN = "./smollm2-135m"
BLOCK = re.compile(r"```sql\n(.*?)```\n\n((?:\|[^\n]*\|\n)+)?", re.S)


def make_standin(folder: Path) -> Path:
    """A random 4-layer Llama with a byte-level BPE trained on the factual pairs' texts."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from ingest_fixtures import tiny_config
    from vindex.ingest.pairs import load_pairs
    ps = load_pairs("factual")
    corpus = [t for p in ps.pairs for t in (p.clean + p.answer, p.corrupt + p.wrong)] * 20
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1200, special_tokens=["<pad>", "<bos>", "<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(tok), n_layers=4))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def render(rel) -> str:
    cols = rel.columns
    rows = rel.fetchall()

    def cell(v):
        if v is None:
            return "NULL"
        if isinstance(v, float):
            return repr(round(v, 6) + 0.0)          # + 0.0: -0.0 prints as 0.0
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]) + "\n"


def run(tmp: Path, update: bool = False) -> list:
    from vindex.query import connect
    os.chdir(tmp)
    make_standin(tmp / "smollm2-135m")
    namespace = run_doc_examples(DOC, at_least={"console": 3, "sql": 3, "python": 1},
                                 standins={"smollm2-135m": STANDIN})
    text = DOC.read_text()
    con = connect(tmp / "lake")
    mismatches, edits = [], []
    for m in BLOCK.finditer(text):
        got = render(con.sql(m.group(1)))
        if got != (m.group(2) or ""):
            mismatches.append((m.group(1), m.group(2), got))
            edits.append((m.span(2) if m.group(2) else (m.end(), m.end()), got))
    if update:
        for (a, b), new in sorted(edits, reverse=True):
            text = text[:a] + new + text[b:]
        DOC.write_text(text)
    return mismatches, namespace


def test_docs_examples_run_and_show_their_results(tmp_path, monkeypatch):
    from vindex import verify
    monkeypatch.chdir(tmp_path)
    mismatches, namespace = run(tmp_path)
    assert not mismatches, "\n\n".join(f"{q}\nexpected:\n{e}\ngot:\n{g}" for q, e, g in mismatches)
    assert verify(tmp_path / "lake" / "smollm2-135m") == []
    assert [r[0] for r in namespace["best"]] == [2, 4] and namespace["best"][1][1] == 1.0


if __name__ == "__main__":
    import tempfile
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as d:
        left, _ = run(Path(d), update="--update" in sys.argv)
        print(f"{len(left)} result table(s) {'rewritten' if '--update' in sys.argv else 'differ'}")
