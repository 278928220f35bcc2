"""The defaults a user meets first, each one decision with its reason (README.md, "Defaults").

They live in core, not beside the code that uses them, because the CLI must show them in `--help`
without importing DuckDB or torch, and the library, the CLI and the viewer must agree
(tests/test_cli_mirror.py checks the CLI against the library).

Model comparisons (`cka_matrix`, `cka_depth`, `mutual_knn_matrix`, `cka_all`, `vindex cka`, the
viewer). `vindex study` measured (docs/study.md, 256 prompts, 99 permutations):
- pooling `mean_nosink`: the mean over content tokens without the first one keeps the depth
  correspondence (Spearman rho 0.94-0.96) with neither known confound. `last` is mostly
  punctuation identity below 40% depth (over prompts both models end in `?` shallow last-token CKA
  falls from 0.65 to 0.07); plain `mean` includes SmolLM2's first-token attention sink (norm
  ~23,500) and loses the depth correspondence (rho -0.15).
- estimator `debiased` (Song et al. 2012, unbiased HSIC): its permutation null sits at 0 (p95 <=
  0.01) where the biased estimator's null p95 reaches 0.12 (mean_nosink), so a value reads as is.
- permutations 99: a CKA value means little without its null; 99 resolves p <= 0.01, and the null
  permutes the stored Grams (cheap next to the Grams themselves).

Builds:
- dtype `auto`: float16 unless a probe of the longest prompts comes within 2x of float16's range,
  else float32 (Gemma 3's hidden states exceed float16; a float16 build of it fails).
- weight feature vectors `down`: W_down's column of each FFN feature, the vector down_meta reads
  out through the unembedding, and the one `vindex study` clusters.
"""
from __future__ import annotations

DEFAULT_POOLING = "mean_nosink"
DEFAULT_ESTIMATOR = "debiased"
DEFAULT_PERMUTATIONS = 99
DEFAULT_DTYPE = "auto"
DEFAULT_VECTORS = "down"
