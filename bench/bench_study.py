"""Benchmark: the first `vindex study` from empty caches (README's main job), against its compute floor.

    python bench/bench_study.py                  # smollm2-135m vs gemma3-270m, then the floor
    python bench/bench_study.py --no-floor --permutations 99

study : `vindex.study.study()` in a fresh process whose $VINDEX_CACHE and $HF_HOME are empty temp
        folders (so the GGUF files are dequantized and converted, and nothing is reused), lake and
        report in temp folders too. Its stderr lines are time-stamped as they arrive, which splits
        the wall time into stages (GGUF conversion, activations, down_meta, analyses).
floor : in a second fresh process, with the models now cached: for each model the best forward
        pass over the same prompts (length-sorted, batch 32, float32, nothing kept) plus down_meta's
        bare float32 matmul + top-k over every layer (bench_down_meta.bare_torch). What no study can
        go below on this machine without changing what it computes.
Reported: wall, CPU (user + sys of the child), peak RSS, the stages, the load average before and
after (the machine may be shared: quote the load with the time), goal <= 300 s, and study / floor.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

STUDY = """
import sys
from vindex.study import study
study({models!r}, out={out!r}, lake={lake!r}, permutations={permutations}, progress=True)
"""

FLOOR = """
import json, sys, time, torch
sys.path.insert(0, {bench!r})
from bench_down_meta import bare_torch
from bench_ingest import bare_forward, sorted_batches
from vindex.ingest.activations import tokenize_prompts
from vindex.ingest.checkpoint import ModelWeights
from vindex.ingest.down_meta import unembedding_matrix
from vindex.ingest.prompts import load_prompts
from vindex.ingest.sources import load_model, resolve_model
out = {{}}
for name in {models!r}:
    src = resolve_model(name, progress=False)
    model, tok = load_model(src, progress=False)
    tk = tokenize_prompts(tok, load_prompts("default").prompts, 256)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    bare_forward(model, tk, [sorted_batches(tk, 32)[0][:1]], pad)            # warm-up
    fwd, _ = bare_forward(model, tk, sorted_batches(tk, 32), pad)
    del model
    w = ModelWeights(src.path, src.config)
    emb = unembedding_matrix(w, "embedding").matrix
    downs = [b.down for i in range(w.n_layers) for b in w.ffn(i)]
    t = time.perf_counter()
    bare_torch(emb, downs, 10)
    out[name] = {{"forward_s": round(fwd, 1), "down_meta_s": round(time.perf_counter() - t, 1)}}
    print(name, out[name], file=sys.stderr, flush=True)
print("FLOOR", json.dumps(out))
"""


def run_child(code: str, env: dict) -> tuple[float, float, int, list[tuple[float, str]], str]:
    """(wall s, CPU s, peak RSS bytes, time-stamped output lines, all output) of `python -c code`
    (stdout and stderr read as one stream, as they arrive: neither pipe can fill up and stall it)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, bufsize=1)
    lines, raw = [], []
    for line in p.stdout:
        raw.append(line)
        for part in line.rstrip("\n").split("\r"):          # progress bars redraw with \r
            if part.strip() and "it/s]" not in part and "s/it]" not in part and "%|" not in part:
                lines.append((time.perf_counter() - t0, part.rstrip()))
                print(f"  {time.perf_counter() - t0:7.1f} s  {part.rstrip()}", file=sys.stderr, flush=True)
    stdout = "".join(raw)
    if p.wait() != 0:
        raise SystemExit(f"child failed ({p.returncode}):\n" + "\n".join(t for _, t in lines[-20:]))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss * 1024, lines, stdout


def stages(lines: list[tuple[float, str]], total: float) -> list[tuple[str, float]]:
    """Seconds between consecutive milestone lines of the study's output (each stage ends where the next starts)."""
    marks = [(0.0, "start (imports, prompts)")]
    for t, text in lines:
        s = text.strip()
        if s.startswith("vindex: dequantizing"):
            marks.append((t, "GGUF -> cache: " + s.split()[2]))
        elif s.startswith("[") and "]" in s[:5]:
            marks.append((t, "study " + s))
        elif "activations built in" in s or "features (down_meta) built in" in s:
            marks.append((t, "after " + s))
    out = []
    for (t, label), (t_next, _) in zip(marks, marks[1:] + [(total, "")]):
        out.append((label, t_next - t))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--permutations", type=int, default=99)
    ap.add_argument("--no-floor", action="store_true", help="skip the compute floor (about 2-4 min more)")
    ap.add_argument("--keep", type=Path, help="keep the caches, lake and report here (default: deleted)")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-study-")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VINDEX_CACHE": str(tmp / "vindex-cache"), "HF_HOME": str(tmp / "hf-home"),
           "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "5"}
    load_before = os.getloadavg()
    print(f"first study of {' vs '.join(args.models)} from empty caches in {tmp} (load {load_before[0]:.1f}, "
          f"{os.cpu_count()} CPUs)", file=sys.stderr, flush=True)
    code = STUDY.format(models=args.models, out=str(tmp / "report"), lake=str(tmp / "lake"),
                        permutations=args.permutations)
    wall, cpu, rss, lines, _ = run_child(code, env)
    load_after = os.getloadavg()
    result = {"models": args.models, "permutations": args.permutations, "study_wall_s": round(wall, 1),
              "study_cpu_s": round(cpu, 1), "study_peak_rss_gib": round(rss / 2**30, 2),
              "load_before_after": [round(load_before[0], 1), round(load_after[0], 1)], "cpus": os.cpu_count(),
              "goal_s": 300, "goal_met": wall <= 300,
              "stages_s": [[label, round(s, 1)] for label, s in stages(lines, wall)]}
    if not args.no_floor:
        _, _, _, _, stdout = run_child(FLOOR.format(bench=str(BENCH), models=args.models), env)
        floor = json.loads(stdout.rsplit("FLOOR", 1)[1])
        total = sum(v["forward_s"] + v["down_meta_s"] for v in floor.values())
        result.update(floor=floor, floor_s=round(total, 1), ratio_study_to_floor=round(wall / total, 2))
    print(json.dumps(result, indent=2))
    if args.keep is None:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
