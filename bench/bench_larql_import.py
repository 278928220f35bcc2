"""Benchmark: import-larql (with gate vectors) against the bare memory-map-and-write it needs.

    python bench/bench_larql_import.py [--layers 16 --features 8192 --hidden 1024 --repeats 3]

A synthetic LarQL vindex (f16 gate vectors, top_k 10 down_meta) is written to a temp folder.
Baseline: for each layer, memory-map its gate rows, wrap them as a fixed-size-list column and
write one zstd Parquet file (the same writer options as vindex), nothing else. Import:
`import_larql(..., gate_vectors=True)`, which also parses and validates down_meta, decodes
tokens, builds the top-k lists, computes gate norms, checksums the inputs and every shard and
commits the manifest. Also timed: the import without vectors. Reported: medians of --repeats
fresh processes, the ratio import / baseline, and each process's peak RSS next to the size of
gate_vectors.bin and the baseline's (streaming keeps the import's peak near one shard part,
whatever the file's size; run with more --layers to see it stay flat).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MiB = 1 << 20


def write_source(folder: Path, layers: int, features: int, hidden: int, top_k: int, vocab: int) -> None:
    """A LarQL folder written with numpy (fast; the tests' struct-based writer is for exactness)."""
    from tokenizers import Tokenizer, models
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0")).save(str(folder / "tokenizer.json"))
    rec = np.dtype([("top", "<u4"), ("c", "<f4"), ("pairs", [("id", "<u4"), ("logit", "<f4")], (top_k,))])
    entries, offset = [], 0
    with open(folder / "gate_vectors.bin", "wb") as g, open(folder / "down_meta.bin", "wb") as d:
        d.write(np.array([0x444D4554, 1, layers, top_k], "<u4").tobytes())
        for layer in range(layers):
            block = rng.standard_normal((features, hidden), dtype=np.float32).astype("<f2")
            g.write(block.tobytes())
            entries.append({"layer": layer, "num_features": features, "offset": offset, "length": block.nbytes})
            offset += block.nbytes
            r = np.zeros(features, rec)
            r["pairs"]["id"] = rng.integers(1, vocab, (features, top_k))
            r["pairs"]["logit"] = -np.sort(-rng.normal(3, 2, (features, top_k)).astype(np.float32), axis=1)
            r["top"], r["c"] = r["pairs"]["id"][:, 0], r["pairs"]["logit"][:, 0]
            d.write(np.array([features], "<u4").tobytes() + r.tobytes())
    (folder / "index.json").write_text(json.dumps({
        "version": 2, "model": "bench/synthetic", "dtype": "f16", "num_layers": layers, "hidden_size": hidden,
        "intermediate_size": features, "vocab_size": vocab, "down_top_k": top_k, "layers": entries}))


def baseline(src: Path, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vindex.writer import PARQUET_OPTIONS
    index = json.loads((src / "index.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    h = index["hidden_size"]
    for e in index["layers"]:
        m = np.memmap(src / "gate_vectors.bin", dtype="<f2", mode="r", offset=e["offset"],
                      shape=(e["num_features"], h))
        col = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(m).reshape(-1)), h)
        pq.write_table(pa.table({"vector": col}), out / f"layer{e['layer']}.parquet", **PARQUET_OPTIONS)
        del m


def child(mode: str, src: Path, out: Path) -> None:
    import pyarrow.parquet  # noqa: F401  (imports outside the timed region, in every mode)

    from vindex.ingest.larql import import_larql
    t = time.perf_counter()
    if mode == "baseline":
        baseline(src, out)
    else:
        import_larql(src, out, gate_vectors=(mode == "import"), progress=False)
    secs = time.perf_counter() - t
    print(json.dumps({"secs": secs, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run(mode: str, src: Path, work: Path, i: int) -> dict:
    out = work / f"{mode}-{i}"
    res = subprocess.run([sys.executable, __file__, "--child", mode, str(src), str(out)],
                         check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--features", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], Path(a.child[1]), Path(a.child[2]))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "src"
        write_source(src, a.layers, a.features, a.hidden, a.top_k, a.vocab)
        size = (src / "gate_vectors.bin").stat().st_size
        print(f"gate_vectors.bin {size / MiB:.0f} MiB ({a.layers} layers x {a.features} x {a.hidden} f16), "
              f"down_meta top_k {a.top_k}, {a.repeats} repeats")
        results = {m: [] for m in ("baseline", "import", "import-no-vectors")}
        for i in range(a.repeats):
            for mode in results:  # interleaved, so drift hits all modes alike
                results[mode].append(run(mode, src, work, i))
        med = {m: statistics.median(r["secs"] for r in rs) for m, rs in results.items()}
        rss = {m: max(r["peak_rss"] for r in rs) for m, rs in results.items()}
        for m in results:
            print(f"{m:<18} {med[m]:7.2f} s   peak RSS {rss[m] / MiB:6.0f} MiB")
        print(f"ratio import / baseline: {med['import'] / med['baseline']:.2f}")
        print(f"import peak RSS - baseline peak RSS: {(rss['import'] - rss['baseline']) / MiB:.0f} MiB "
              f"(both hold one layer at a time; gate_vectors.bin is {size / MiB:.0f} MiB)")


if __name__ == "__main__":
    main()
