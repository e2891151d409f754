"""Write a diagnostic copy of the fused GEMM source that time-stamps every claim of every CTA (%globaltimer).

    python bench/timeline_patch.py cuda/sm90_mixed_grouped_gemm.cu OUT.cu

Build a copy of the repository with OUT.cu as its cuda/sm90_mixed_grouped_gemm.cu, then run
bench/claim_timeline.py there.  Not part of the library: the patched kernel appends a record per claim to a region
after the schedule's slots (the workspace grows by DIAG_BYTES), which claim_timeline.py reads back.

Record (48 bytes): tile id (-1: the CTA's entry), CTA, SM, kind (0 whole tile, 1 piece of the split tail, 2 entry),
then four %globaltimer stamps in ns: claim start (for an entry: the kernel's first instruction), claim end (for an
entry: past the wait for the schedule kernel), and for decode stream tiles the moment the first chunk and slice were
ready (after the first slice barrier) and the moment the last chunk was computed.  Each anchor below must match the
kernel source exactly once, so a changed kernel fails here loudly instead of producing a wrong build.
"""
from __future__ import annotations

import sys

DIAG_RECORDS = 16384
DIAG_BYTES = 64 + 48 * DIAG_RECORDS

EDITS = [
    # the workspace grows by the diagnostic region, after the slots
    ("    return (tables + 255) / 256 * 256 + sizeof(float) * kSlotFloats * 3 * (size_t)max_ctas;",
     "    return (tables + 255) / 256 * 256 + sizeof(float) * kSlotFloats * 3 * (size_t)max_ctas + kDiagBytes;"),
    ("struct Schedule {        // views into the caller's workspace",
     f"constexpr size_t kDiagRecords = {DIAG_RECORDS}, kDiagBytes = {DIAG_BYTES};\n"
     "struct DiagRecord { int32_t tile, cta, smid, kind; unsigned long long t0, t1, t_ready, t_loop; };\n"
     "__shared__ unsigned long long g_diag_marks[2];\n"
     "__device__ __forceinline__ unsigned long long diag_now() {\n"
     "    unsigned long long t; asm volatile(\"mov.u64 %0, %globaltimer;\" : \"=l\"(t)); return t; }\n"
     "__device__ __forceinline__ int diag_smid() {\n"
     "    int s; asm volatile(\"mov.u32 %0, %smid;\" : \"=r\"(s)); return s; }\n"
     "struct Schedule {        // views into the caller's workspace"),
    ("    float *slots;        // [3 max_ctas][kSlotFloats] partial tiles\n};",
     "    float *slots;        // [3 max_ctas][kSlotFloats] partial tiles\n"
     "    int32_t *diag_count;\n    DiagRecord *diag;\n};"),
    ("    s.slots = reinterpret_cast<float *>(base + (off + 255) / 256 * 256);\n    return s;",
     "    s.slots = reinterpret_cast<float *>(base + (off + 255) / 256 * 256);\n"
     "    char *d = reinterpret_cast<char *>(s.slots) + sizeof(float) * kSlotFloats * 3 * (size_t)max_ctas;\n"
     "    s.diag_count = reinterpret_cast<int32_t *>(d);\n"
     "    s.diag = reinterpret_cast<DiagRecord *>(d + 64);\n    return s;"),
    # the schedule kernel resets the record counter with the claim counter
    ("        *sched.counter = 0;\n", "        *sched.counter = 0;\n        *sched.diag_count = 0;\n"),
    # entry record: the kernel's first instruction and the end of the wait for the schedule kernel
    ("    grid_dependency_wait();  // launched early (programmatic dependent launch): wait for the schedule kernel\n",
     "    const unsigned long long diag_entry = diag_now();\n"
     "    grid_dependency_wait();  // launched early (programmatic dependent launch): wait for the schedule kernel\n"
     "    if (threadIdx.x == 0) {\n"
     "        const int slot = atomicAdd(sched.diag_count, 1);\n"
     "        if (slot < (int)kDiagRecords)\n"
     "            sched.diag[slot] = DiagRecord{-1, (int32_t)blockIdx.x, diag_smid(), 2, diag_entry, diag_now(),\n"
     "                                          0, 0};\n"
     "    }\n"),
    # one record per claim
    ("    while (tile < total) {\n        int next = 0;\n",
     "    while (tile < total) {\n        const unsigned long long diag_t0 = diag_now();\n"
     "        if (threadIdx.x == 0) g_diag_marks[0] = g_diag_marks[1] = 0;\n        int next = 0;\n"),
    ("        if (threadIdx.x == 0) claimed = next;\n",
     "        if (threadIdx.x == 0) {\n"
     "            const int slot = atomicAdd(sched.diag_count, 1);\n"
     "            if (slot < (int)kDiagRecords)\n"
     "                sched.diag[slot] = DiagRecord{tile, (int32_t)blockIdx.x, diag_smid(),\n"
     "                                              tile < tail_start ? 0 : 1,\n"
     "                                              diag_t0, diag_now(), g_diag_marks[0], g_diag_marks[1]};\n"
     "        }\n"
     "        if (threadIdx.x == 0) claimed = next;\n"),
    # decode stream tiles: first chunk and slice ready, last chunk computed
    ("            stream_prepare_slice<ID>(smem, c / F::C, m);\n            __syncthreads();\n",
     "            stream_prepare_slice<ID>(smem, c / F::C, m);\n            __syncthreads();\n"
     "            if (threadIdx.x == 0 && c == c_begin) g_diag_marks[0] = diag_now();\n"),
    ("    cp_async_wait<0>();\n    __syncthreads();  // the next tile may overwrite every buffer\n",
     "    cp_async_wait<0>();\n    __syncthreads();  // the next tile may overwrite every buffer\n"
     "    if (threadIdx.x == 0) g_diag_marks[1] = diag_now();\n"),
]


def patch(source: str) -> str:
    for anchor, replacement in EDITS:
        count = source.count(anchor)
        if count != 1:
            raise ValueError(f"anchor found {count} times (need exactly 1), the kernel changed: {anchor[:70]!r}")
        source = source.replace(anchor, replacement)
    return source


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        text = patch(f.read())
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
