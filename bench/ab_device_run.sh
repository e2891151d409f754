#!/bin/bash
# A/B of the CUDA kernels in one device call: this tree ("new") against baseline sources kept (git-ignored) in
# .deps/old/ (any of cuda/*.cu, e.g. sm90_mixed_grouped_gemm.cu, route.cu), each with its sm_90a object prebuilt next
# to it (X.cu.o), both built here and timed
# back to back by bench/bench_gemm.py (graph-replayed), optionally the whole layer too; SASS of both objects and the
# SM clock during the runs (nvidia-smi, 100 ms) under $OUT.
# VARIANTS="cost0:MXMOE_GEMM_SPLIT_COST=0 ..." times the new build again under each setting.
# NOSPLIT=0 skips the run of the new build without the split tail.
# TESTS=1 runs the GPU tests of the new build first; NCU="<gemm_probe.py specs>" adds an Nsight Compute summary of
# both builds' fused kernel on those launches.  Everything comes back as $OUT/ab.tgz.
# Usage (device machine, repository root): BENCH_ARGS="--tokens 1,16 --schemes w4a16_g128_asym" LAYER=1 \
#        bash bench/ab_device_run.sh
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export MXMOE_GLPK_PREFIX=$PWD/.deps/glpk LD_LIBRARY_PATH=$PWD/.deps/glpk/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
export MXMOE_CUDA_ARCHS=90a PYTHONUNBUFFERED=1
OBJ=build/temp.linux-x86_64-cpython-312/cuda
find build .deps/old -name '*.o' -exec touch {} +
python3 setup.py build_ext --inplace -q > $OUT/build-new.txt 2>&1 || { tail $OUT/build-new.txt; exit 1; }
rm -rf /tmp/old && mkdir -p /tmp/old && tar --exclude=./.deps -cf - . | tar -xf - -C /tmp/old
for src in .deps/old/*.cu; do cp $src /tmp/old/cuda/ && cp $src.o /tmp/old/$OBJ/ || exit 1; done
find /tmp/old/build -name '*.o' -exec touch {} +
# The copied tree holds the new build's extension (in place and under build/lib*); setuptools relinks only when a
# source is newer than it (objects do not count), so without this the "old" runs would time the new kernel.
rm -rf /tmp/old/mxmoe/_cuda*.so /tmp/old/build/lib.*
(cd /tmp/old && python3 setup.py build_ext --inplace -q > $OUT/build-old.txt 2>&1) || { tail $OUT/build-old.txt; exit 1; }
md5sum mxmoe/_cuda*.so /tmp/old/mxmoe/_cuda*.so | tee $OUT/so-md5.txt
[ "$(md5sum < mxmoe/_cuda*.so)" != "$(md5sum < /tmp/old/mxmoe/_cuda*.so)" ] || { echo "old and new builds are one"; exit 1; }
for o in new:$OBJ/sm90_mixed_grouped_gemm.cu.o old:/tmp/old/$OBJ/sm90_mixed_grouped_gemm.cu.o; do
    cuobjdump -sass ${o#*:} | gzip > $OUT/sass-${o%%:*}.txt.gz
done
if [ "${TESTS:-0}" != 0 ]; then
    PYTHONPATH=$PWD timeout 200 python3 -m pytest -q tests/test_cuda_gemm.py tests/test_cuda_route.py tests/test_cuda_ops.py \
        2>&1 | tail -15 | tee $OUT/tests.txt
fi
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv \
    -lms 100 > $OUT/clocks.csv 2>&1 &
SMI=$!
run() {  # name, tree, extra env
    echo "=== $1 ($(date -u +%H:%M:%S))"
    (cd $2 && env $3 PYTHONPATH=$2 timeout 150 python3 bench/bench_gemm.py --out $OUT/gemm-$1.json --reps ${REPS:-20} \
        ${BENCH_ARGS:-} > $OUT/gemm-$1.txt 2>&1) || tail -5 $OUT/gemm-$1.txt
    if [ "${LAYER:-0}" != 0 ]; then
        (cd $2 && env $3 PYTHONPATH=$2 timeout 150 python3 -m mxmoe.bench_kernels --scopes layer --impls uniform \
            --reps 10 ${LAYER_ARGS:-} --out $OUT/layer-$1.json > $OUT/layer-$1.txt 2>&1) || tail -5 $OUT/layer-$1.txt
    fi
}
run old /tmp/old
run new $PWD
[ "${NOSPLIT:-1}" != 0 ] && run new-nosplit $PWD MXMOE_GEMM_SPLIT_TAIL=0
for v in ${VARIANTS:-}; do run new-${v%%:*} $PWD ${v#*:}; done  # name:ENV=value (settings of the new build)
run old2 /tmp/old
kill $SMI
if [ -n "${NCU:-}" ]; then
    for tree in old:/tmp/old new:$PWD; do
        (cd ${tree#*:}/bench && PYTHONPATH=${tree#*:} timeout 120 ncu --kernel-name regex:"fused_grouped|schedule" --metrics \
            gpu__time_duration.sum,sm__cycles_active.avg,sm__cycles_active.max,sm__cycles_elapsed.max,dram__throughput.avg.pct_of_peak_sustained_elapsed,smsp__issue_active.avg.pct_of_peak_sustained_active \
            python3 gemm_probe.py $NCU > $OUT/ncu-${tree%%:*}.txt 2>&1)
        grep -E "fused_grouped|schedule_kernel|duration|cycles_active|elapsed|dram__|issue" $OUT/ncu-${tree%%:*}.txt | \
            sed -e 's/(const mx_cuda_problem.*//' | head -40
    done
fi
echo "=== done ($(date -u +%H:%M:%S))"
(cd $OUT && tar -czf /tmp/ab.tgz . && find . -type f -delete && mv /tmp/ab.tgz .)
