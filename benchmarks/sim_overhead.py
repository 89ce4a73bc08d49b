"""Simulated TP costs what the dense model costs (kept for the command in BENCHMARKS.md).

    python benchmarks/sim_overhead.py [--steps 30]     is     tpgpt bench throughput --steps 30
"""
import sys

from tpgpt.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "throughput", *sys.argv[1:]]))
