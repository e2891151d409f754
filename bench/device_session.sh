#!/bin/bash
# The integration run on the lent H100: build mxmoe (sm_90a) against the carried GLPK, every GPU test of the suite,
# then the accuracy table of the mini model with the quantized models running on our CUDA kernels.
# Usage (device machine, repository root, carry .deps/glpk): bash bench/device_session.sh ; results under $OUT.
set -o pipefail
export MXMOE_GLPK_PREFIX=$PWD/.deps/glpk LD_LIBRARY_PATH=$PWD/.deps/glpk/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
export MXMOE_CUDA_ARCHS=${MXMOE_CUDA_ARCHS:-90a} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
LOG=$OUT/session.txt
step() { echo "=== $* ($(date -u +%H:%M:%S))" | tee -a $LOG; }
step env
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | tee -a $LOG
step build
(time python3 setup.py build_ext --inplace -q) 2>&1 | grep -v "^ptxas\|bytes stack\|^copying\|^creating" | tail -15 | tee -a $LOG
python3 -c "import mxmoe; print(mxmoe.cuda_status())" 2>&1 | tee -a $LOG
step gpu tests
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -p no:cacheprovider tests -m "not slow" --maxfail=10 \
    2>&1 | tail -25 | tee -a $LOG
step accuracy
timeout ${ACCURACY_TIMEOUT:-300} python3 -m mxmoe bench accuracy --device cuda --out $OUT/accuracy-mini.json \
    --cache-dir /tmp/mxmoe-cache 2>&1 | grep -v "it/s\]\|s/it\]\|window/s\]\|s/window\]\|block/s\]\|batch/s\]" \
    | tail -40 | tee -a $LOG
step done
