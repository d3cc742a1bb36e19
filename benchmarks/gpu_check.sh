#!/usr/bin/env bash
# One lease of a CUDA machine, in one call: the Triton kernels' CUDA tests, then bench_gpu.py.
# Run from the repository root; logs and the CSV go to $OUT (or ./gpu-out). Needs torch with CUDA,
# triton, numba, pytest and pytest-xdist installed (softmaxce itself is read from src/).
set -o pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
if ! python3 -c "import torch, sys; sys.exit(not hasattr(torch.nn, 'LinearCrossEntropyLoss'))"; then
    export PYTHONPATH=$PYTHONPATH:$PWD/benchmarks/gpu_shim  # torch < 2.13 there: gpu_shim/sitecustomize.py
    echo "torch < 2.13: torch.nn.LinearCrossEntropyLoss from benchmarks/gpu_shim"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/env.txt"
python3 -c "import torch, triton, numba, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/env.txt"
timeout "${TEST_TIMEOUT:-210}" python3 -m pytest -q -p no:cacheprovider -n 8 -rfE --tb=short \
    tests/triton tests/torch/test_higher_order.py -k cuda 2>&1 | tee "$OUT/tests.log" | tail -60
echo "tests exit: $?"
timeout "${BENCH_TIMEOUT:-270}" python3 benchmarks/bench_gpu.py --warmup 2 --repeat 5 --csv "$OUT/gpu.csv" "$@" 2>&1 | tee "$OUT/bench.log"
echo "bench exit: $?"
grep -E "passed|failed" "$OUT/tests.log" | tail -1
