"""Repeated cold builds of the 1k preset's `svd` features on a GPU, in one process.

    python benchmarks/bench_gpu_build.py [--device cuda]

The first build of a process pays for CUDA, cuSOLVER and Triton start-up and a cold page cache;
the later ones show the steady state. Alternates 1 and 4 writer threads (builder.WRITERS).
"""

import argparse
import tempfile
import time

import featstore
from featstore import builder

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--device", default="cuda")
args = parser.parse_args()
for writers in (1, 4, 1, 4, 1, 4):
    builder.WRITERS = writers
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = featstore.build("1k", ["svd"], store=tmp + "/s", device=args.device)
        seconds = {k: round(v, 2) for k, v in report.seconds.items()}
        print("writers", writers, f"{time.perf_counter() - start:.2f} s", seconds, flush=True)
