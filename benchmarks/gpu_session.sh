#!/usr/bin/env bash
# What ran on the lent GPU machine (benchmarks/results/*-h100*, *-h200*): tests, then benchmarks.
# Needs the wheels of packages that machine lacks in .whl/ (DEVELOPERS.md says how).
# `gpu_session.sh multigpu` runs the 10k multi-GPU table instead (generates 10k: 21 GB; carry .dwhl too);
# `gpu_session.sh startup` the start-up tables of fresh `featstore build` processes, GPU and host CPU;
# `gpu_session.sh cpu-build` the CPU build table (bench_cpu_build.py) on the host's cores;
# `gpu_session.sh incremental` the incremental-build table (bench_incremental.py) on the host's cores;
# `gpu_session.sh first-build` what the first GPU build in a process pays (probe_first_build.py), with
# bytecode cached as on a user's machine (the lent machine sets PYTHONDONTWRITEBYTECODE=1);
# `gpu_session.sh gpu-compute` where a build's GPU compute goes (probe_gpu_compute.py);
# `gpu_session.sh shapes` featurizers and singular-value routes on LoRA factors' shapes (bench_shapes.py), with
# the tests of the featurizers and singular values;
# `gpu_session.sh featurizers` bench_featurizers.py on all 128 layers (~4 min: a call of its own);
# `gpu_session.sh tests` the test files alone, without the benchmarks after them;
# `gpu_session.sh build` the test files, then the cold 1k svd build table (bench_gpu_build.py) alone;
# `gpu_session.sh wide` singular-value routes on square matrices wider than the kernel's 64 (bench_svdvals.py);
# `gpu_session.sh first-ab` fresh processes' first builds, this tree against .old (carried), bytecode cached.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FEATSTORE_HOME=/tmp/fshome OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
if [ "${1:-}" = multigpu ]; then  # Dask from .dwhl/, behind the machine's own packages
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/dsite .dwhl/*.whl || exit 1
    echo 'import site; site.addsitedir("/tmp/dsite")' > /tmp/site/sitecustomize.py
    python3 benchmarks/bench_multigpu.py --preset 10k --gpus 1 2 --cpu --out "$OUT"
    exit
fi
if [ "${1:-}" = cpu-build ]; then  # CPU builds on the host's cores; with .old/featstore (carried), that version's too
    python3 -m featstore.cli datasets make 1k > /dev/null
    python3 benchmarks/bench_cpu_build.py --layers 'layer_0[0-3]*' --out "$OUT"
    [ -d .old/featstore ] && PYTHONPATH=/tmp/site:$PWD/.old python3 benchmarks/bench_cpu_build.py --layers 'layer_0[0-3]*' --out "$OUT/old"
    exit
fi
if [ "${1:-}" = incremental ]; then
    python3 -m featstore.cli datasets make 1k > /dev/null
    python3 benchmarks/bench_incremental.py --out "$OUT" && mv "$OUT/incremental.txt" "$OUT/incremental-16cores-h200-host.txt"
    exit
fi
if [ "${1:-}" = first-build ]; then
    unset PYTHONDONTWRITEBYTECODE
    export PYTHONPYCACHEPREFIX=/tmp/pyc
    python3 -m featstore.cli datasets make 1k > /dev/null
    python3 benchmarks/probe_first_build.py --repeat 1 --out /tmp/unrecorded > /dev/null  # bytecode, Triton's cache
    python3 benchmarks/probe_first_build.py --repeat 3 --out "$OUT"
    python3 benchmarks/probe_first_build.py --profile | head -45 > "$OUT/first-call-profile.txt"
    exit
fi
if [ "${1:-}" = first-ab ]; then
    unset PYTHONDONTWRITEBYTECODE
    export PYTHONPYCACHEPREFIX=/tmp/pyc
    python3 -m featstore.cli datasets make 1k > /dev/null
    python3 benchmarks/ab_build.py --old .old --device cuda --first --rounds 1 > /dev/null  # bytecode, Triton's cache
    for device in cuda auto; do
        python3 benchmarks/ab_build.py --old .old --device $device --first --rounds 7 | tee "$OUT/ab-first-build-$device.txt"
    done
    exit
fi
if [ "${1:-}" = gpu-compute ]; then
    python3 -m featstore.cli datasets make 1k > /dev/null
    python3 benchmarks/probe_gpu_compute.py --repeat 3 --out "$OUT"
    exit
fi
if [ "${1:-}" = shapes ]; then
    python3 -m pytest -q -p no:cacheprovider tests/test_svdvals.py tests/test_featurizers.py tests/test_builder.py 2>&1 | tail -3 | tee "$OUT/gpu-tests.txt"
    (cd benchmarks && python3 bench_shapes.py --device cuda --out "$OUT")
    exit
fi
if [ "${1:-}" = featurizers ]; then
    python3 -m featstore.cli datasets make 1k > /dev/null
    python3 benchmarks/bench_featurizers.py --device cuda --layers 128 --out "$OUT"
    exit
fi
if [ "${1:-}" = wide ]; then
    python3 benchmarks/bench_svdvals.py --dims 96 128 192 256 320 --batches 5 --out "$OUT"
    exit
fi
if [ "${1:-}" = startup ]; then
    python3 benchmarks/bench_startup.py --device cuda --out "$OUT"
    python3 benchmarks/bench_startup.py --device cpu --out "$OUT" && mv "$OUT/startup-cpu.txt" "$OUT/startup-cpu-h100-host.txt"
    exit
fi
# every file whose tests build or load on a device (test_safety: its tests that run without Dask or S3)
python3 -m pytest -q -p no:cacheprovider -x tests/test_svdvals.py tests/test_featurizers.py tests/test_builder.py \
    tests/test_api.py tests/test_torch.py tests/test_examples.py tests/test_incremental.py tests/test_stateful.py \
    tests/test_sources.py tests/test_presets.py tests/test_crash.py tests/test_columns.py tests/test_keys.py \
    tests/test_identity.py tests/test_grouping.py tests/test_safety.py -k "not test_safety or forget or outlive" 2>&1 | tail -8 | tee "$OUT/gpu-tests.txt"
[ "${1:-}" = tests ] && exit
if [ "${1:-}" = build ]; then  # the test files, then the cold-build table alone
    python3 -m featstore.cli datasets make 1k > /dev/null
    python3 benchmarks/bench_gpu_build.py --device cuda --repeat 3 --out "$OUT"
    exit
fi
python3 benchmarks/bench_svdvals.py --dims 4 8 16 32 64 128 --out "$OUT"
(cd benchmarks && python3 bench_jacobi_tuning.py --dims 64 128 --warps 2 4 8 16 --sweeps 6 8 10 --out "$OUT")
python3 -m featstore.cli datasets make 1k > /dev/null
python3 benchmarks/bench_featurizers.py --device cuda --layers 128 --out "$OUT"
python3 benchmarks/bench_gpu_build.py --device cuda --repeat 3 --out "$OUT"
python3 benchmarks/bench_load.py --out "$OUT"
python3 benchmarks/bench_experiment.py --device cuda --out "$OUT" 2>/dev/null
