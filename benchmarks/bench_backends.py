"""Time `dsg evaluate` with each model backend on the same case, and check the reports agree.

Each backend runs `dsg evaluate` in its own process and run directory (nothing cached is
shared), with the same thread count. The script fails unless both reports have the same
score, baselines, subsets sizes and per-configuration accuracies and firing rates, then prints
the wall time per stage and the ratio.

    python benchmarks/bench_backends.py                    # the organism, on the CPU
    python benchmarks/bench_backends.py --threads 4 -- --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = ("transformer_lens", "transformers")
COMPARED = ("unlearning_score", "baseline", "sets", "configs")


def run(backend: str, out: Path, threads: int, extra: list[str]) -> tuple[float, dict]:
    """Wall time of one `dsg evaluate` and its report."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-c", "from dsg.cli.app import app; app()", "evaluate"]
    command += ["--backend", backend, "--out", str(out), *extra]
    start = time.perf_counter()  # in the run directory: no dsg.toml of the caller's applies
    subprocess.run(command, env=env, cwd=out.parent, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("extra", nargs="*", help="more `dsg evaluate` options, after --")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dsg-bench-backends-"))
    results = {b: run(b, scratch / b, args.threads, args.extra) for b in BACKENDS}
    (_, tl), (_, hf) = results["transformer_lens"], results["transformers"]
    for key in COMPARED:
        if tl[key] != hf[key]:
            raise SystemExit(f"the reports differ in {key!r}")
    print(f"reports agree ({', '.join(COMPARED)}); score {tl['unlearning_score']:.4f}")
    stages = list(tl["timings"])
    print(f"{'backend':18}{'total s':>9}" + "".join(f"{s:>10}" for s in stages))
    for backend, (seconds, report) in results.items():
        cells = "".join(f"{report['timings'][s]:10.1f}" for s in stages)
        print(f"{backend:18}{seconds:9.1f}{cells}")
    ratio = results["transformer_lens"][0] / results["transformers"][0]
    print(f"transformers is {ratio:.2f}x as fast as transformer_lens (whole command)")


if __name__ == "__main__":
    main()
