"""The fault suite at a larger scale: `python tests/faults/soak.py --cases 2000 [--seed S]`.

Runs the same pytest files as CI (tests/faults/) with every randomised group's count scaled so the
suite has about --cases cases in all (the fixed cases stay as they are), under a seed of its own
(random unless --seed; printed first, so a failure reproduces with VINDEX_FAULT_SEED=<seed> and the
printed counts). The scoreboard is printed at the end, as in CI, and also written as JSON
(--report). Exit status 1 when any case was not handled.

    python tests/faults/soak.py --cases 2000                  # all groups
    python tests/faults/soak.py --cases 600 -k corrupt        # extra pytest arguments after the options
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import fault_harness as fh  # noqa: E402


def _env(seed: int, scale: float | None, report: Path | None) -> dict:
    env = {**os.environ, fh.SEED_ENV: str(seed)}
    if scale is not None:
        env.update({f"VINDEX_FAULTS_{k.upper()}": str(max(v, round(v * scale))) for k, v in fh.COUNTS.items()})
    if report is not None:
        env[fh.REPORT_ENV] = str(report)
    return env


def _collected(env: dict, extra: list[str]) -> int:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        str(HERE), *extra], cwd=ROOT, env=env, capture_output=True, text=True)
    m = re.search(r"(\d+)(?:/\d+)? tests? collected", r.stdout)
    if r.returncode not in (0, 5) or not m:
        sys.exit(f"collecting the suite failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return int(m.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000, help="about how many cases in all (default 2000)")
    ap.add_argument("--seed", type=int, default=None, help="the suite's seed (default: a random one)")
    ap.add_argument("--report", type=Path, default=None, help="write the scoreboard here as JSON")
    args, extra = ap.parse_known_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    # the random groups' share of the suite: collected at the CI counts and at twice them
    base, double = _collected(_env(seed, None, None), extra), _collected(_env(seed, 2.0, None), extra)
    random_cases = max(1, double - base)
    scale = max(1.0, (args.cases - (base - random_cases)) / random_cases)
    env = _env(seed, scale, args.report)
    planned = _collected(env, extra)
    counts = {k: env[f"VINDEX_FAULTS_{k.upper()}"] for k in fh.COUNTS}
    print(f"soak: seed {seed}, {planned} cases; counts: "
          + " ".join(f"VINDEX_FAULTS_{k.upper()}={v}" for k, v in counts.items()), flush=True)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE), *extra],
                       cwd=ROOT, env=env)
    if args.report and args.report.exists():
        c = json.loads(args.report.read_text())["counts"]
        print(f"soak: seed {seed}: {c['tried']} tried, {c['handled']} handled, {c['silent-wrong']} silent-wrong, "
              f"{c['data-lost']} data-lost, {c['bare-traceback']} bare-traceback; report in {args.report}")
    return 0 if r.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
