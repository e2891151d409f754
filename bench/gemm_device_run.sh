#!/bin/bash
# One device session for the GEMM work, most important first: build, GPU tests, GEMM benchmark + kernel profile,
# compute-sanitizer, Nsight Compute probe, the whole-layer benchmark (mxmoe.bench_kernels); logs, JSON under $OUT.
# Usage (on the device machine, repository root): bash bench/gemm_device_run.sh
# Trims for short device sessions: BENCH_ARGS (extra bench_gemm.py arguments, e.g. "--tokens 1,16,8192"),
# PROFILE=0 (no kernel profile), NCU=0 (no Nsight Compute probe), LAYER=0 (no whole-layer benchmark).
set -o pipefail
export MXMOE_GLPK_PREFIX=$PWD/.deps/glpk LD_LIBRARY_PATH=$PWD/.deps/glpk/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
export MXMOE_CUDA_ARCHS=${MXMOE_CUDA_ARCHS:-90a} PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
LOG=$OUT/log.txt
step() { echo "=== $* ($(date -u +%H:%M:%S))" | tee -a $LOG; }
step env
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a $LOG
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" 2>&1 | tee -a $LOG
step build
(time python3 setup.py build_ext --inplace -q) 2>&1 | grep -v "^ptxas info\|^    [0-9]* bytes\|^/opt/gcc\|^/usr/local/cuda/bin\|^copying\|^creating" | tail -20 | tee -a $LOG
python3 -c "import mxmoe; print(mxmoe.cuda_status())" 2>&1 | tee -a $LOG
step tests
TESTS="tests/test_cuda_gemm.py"
for t in tests/test_cuda_route.py tests/test_cuda_ops.py; do [ -f $t ] && TESTS="$TESTS $t"; done
timeout 150 python3 -m pytest -q $TESTS 2>&1 | tail -40 | tee -a $LOG
step bench_gemm
PROFILE_ARGS="--profile-out $OUT/kernel-profile.json"; [ "${PROFILE:-1}" = 0 ] && PROFILE_ARGS=
timeout ${BENCH_TIMEOUT:-300} python3 bench/bench_gemm.py --out $OUT/kernels-gemm.json $PROFILE_ARGS \
    --reps ${REPS:-20} ${BENCH_ARGS:-} 2>&1 | tee -a $LOG | tail -5
python3 bench/bench_gemm.py --summarize $OUT/kernels-gemm.json 2>&1 | tee -a $LOG
step sanitizer
timeout 90 compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest -q -x tests/test_cuda_gemm.py \
    -k "mixed or graph or split or decode_stream" 2>&1 | tail -12 | tee -a $LOG
timeout 60 compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest -q -x tests/test_cuda_route.py \
    -k "two_stage" 2>&1 | tail -6 | tee -a $LOG
step ncu
[ "${NCU:-1}" != 0 ] && (cd bench && timeout 60 ncu --kernel-name regex:"fused_grouped|schedule" --metrics \
    gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,launch__registers_per_thread \
    python3 gemm_probe.py) > $OUT/ncu.txt 2>&1; tail -40 $OUT/ncu.txt | tee -a $LOG
step layer_bench
[ "${LAYER:-1}" != 0 ] && timeout ${LAYER_TIMEOUT:-130} python3 -m mxmoe.bench_kernels --scopes layer --reps 10 --out $OUT/kernels-layer.json \
    2>&1 | tail -60 | tee -a $LOG
step done
