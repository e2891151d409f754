"""Accuracy table on the bundled mini model -> bench/results/accuracy-mini.json.

Same as ``python -m mxmoe bench accuracy [options]`` (the logic lives in mxmoe/evaluate.py: accuracy_configs,
run_accuracy_bench).  Examples:

    python bench/bench_accuracy.py                                   # full WikiText-2 test, 128 calibration windows
    python bench/bench_accuracy.py --max-windows 16 --n-samples 32 --cache-dir /tmp/mxmoe-bench-cache
"""
import sys

from mxmoe.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "accuracy", *sys.argv[1:]]))
