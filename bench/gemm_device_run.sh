#!/bin/bash
# One device session for the GEMM work (build, GPU tests, sanitizer, benchmarks); logs and JSON under $OUT.
# Usage (on the device machine, repository root): bash bench/gemm_device_run.sh [quick|full]
set -o pipefail
MODE=${1:-full}
export MXMOE_GLPK_PREFIX=$PWD/.deps/glpk LD_LIBRARY_PATH=$PWD/.deps/glpk/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
export MXMOE_CUDA_ARCHS=${MXMOE_CUDA_ARCHS:-90a} PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee $OUT/env.txt
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a $OUT/env.txt
(time python3 setup.py build_ext --inplace -q) 2>&1 | grep -v "^ptxas info\|^    [0-9]* bytes" | tail -20 | tee $OUT/build.txt
python3 -c "import mxmoe; print(mxmoe.cuda_status())" | tee -a $OUT/env.txt
TESTS="tests/test_cuda_gemm.py"; [ -f tests/test_cuda_route.py ] && TESTS="$TESTS tests/test_cuda_route.py"
timeout 200 python3 -m pytest -q -x $TESTS 2>&1 | tail -40 | tee $OUT/tests.txt
timeout 150 compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest -q -x tests/test_cuda_gemm.py \
    -k "mixed or graph" 2>&1 | tail -15 | tee $OUT/sanitizer.txt
if [ "$MODE" = quick ]; then
  timeout 200 python3 bench/bench_gemm.py --out $OUT/kernels-gemm.json --reps 10 \
      --models qwen1.5-moe,mixtral-8x7b --tokens 16,1024,8192 2>&1 | tee $OUT/bench.txt
else
  timeout 330 python3 bench/bench_gemm.py --out $OUT/kernels-gemm.json --profile-out $OUT/kernel-profile.json --reps ${REPS:-15} \
      2>&1 | tee $OUT/bench.txt
fi
