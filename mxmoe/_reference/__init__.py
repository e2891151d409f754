"""Independent NumPy references of the C entry points: the test oracle (one module per area:
quant, gemm, hadamard, gptq, stats, ilp).  Written from the maths, not from the C code."""
