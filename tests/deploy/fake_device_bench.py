"""A stand-in for a device's benchmark command: prints a latency computed from the model file's
size (1 ms per 100 kB), so tests of the device backends need no phone or board.

    python fake_device_bench.py MODEL [--runs N] [--fail] [--silent]
"""

import sys
from pathlib import Path

args = sys.argv[1:]
size = Path(args[0]).stat().st_size
if "--fail" in args:
    print("board unreachable", file=sys.stderr)
    sys.exit(3)
if "--silent" in args:
    print("done")
    sys.exit(0)
runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 1
base = size / 1e5
for k in range(runs):  # a spread of ±2% around the size-derived latency, the middle one exact
    print(f"{base * (1 + 0.005 * (k - runs // 2)):.4f}")
