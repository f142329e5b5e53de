"""Draws the latency distribution of a benchmark run.

Usage: python3 benches/plot_latency.py bench-results
Reads latencies.csv (written by `cargo bench --bench load`) and writes
latency.png beside it: one empirical CDF per phase, log-scaled latency, so
that the median, the tail and the maximum are all visible. Needs matplotlib.
"""

import csv
import sys
from collections import defaultdict
from pathlib import Path

try:
    import matplotlib
except ModuleNotFoundError:
    sys.exit("plot_latency: needs matplotlib: pip install -r benches/requirements.txt")

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
phases = defaultdict(list)
try:
    with open(out / "latencies.csv") as f:
        for row in csv.DictReader(f):
            phases[row["phase"]].append(float(row["latency_ms"]))
except FileNotFoundError:
    sys.exit(f"plot_latency: no latencies.csv in {out}: give the directory of a run "
             "(`cargo bench --bench load` writes bench-results, or its --out)")

fig, ax = plt.subplots(figsize=(9, 5.5))
for name, values in phases.items():
    values.sort()
    n = len(values)
    # In-process phases dashed, so that each stands out from the HTTP
    # phase at the same concurrency.
    ax.step(values, [(i + 1) / n for i in range(n)], where="post",
            linestyle="--" if name.startswith("in-process") else "-",
            label=f"{name} (p99 {values[int(0.99 * (n - 1))]:.2f} ms, max {values[-1]:.1f} ms)")
ax.set_xscale("log")
ax.set_xlabel("client-measured latency (ms, log scale)")
ax.set_ylabel("fraction of requests answered within")
ax.set_title("neptun-local: latency per phase (" + (out / "results.md").read_text().splitlines()[0].split(": ", 1)[-1] + ")", fontsize=9)
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(out / "latency.png", dpi=110)
print(f"wrote {out / 'latency.png'}")
