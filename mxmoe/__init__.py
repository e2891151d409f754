"""mxmoe — mixed-precision quantization of Mixture-of-Experts models (MxMoE, arXiv 2505.05799).

    import mxmoe
    qmodel = mxmoe.quantize(model, calib_texts, tokenizer=tok, wbits=3.25, r=0.75)
    mxmoe.save_quantized(qmodel, "out/")

Importing mxmoe needs only NumPy: public names are resolved lazily from their modules (table below), and torch /
transformers are imported only by the functions that work on models.  The C core is mxmoe._C; the GPU kernels are
mxmoe._cuda (see cuda_status()).
"""
from __future__ import annotations

import importlib
import os
from typing import Any

# The C core's OpenMP threads sleep between calls instead of spinning: mxmoe's CPU runtime interleaves short C
# GEMMs with PyTorch work, and spinning workers would steal the cores PyTorch needs (measured: 6 -> 34 GFLOP/s for
# the reference GroupGEMM on a loaded 2-core machine).  Must be set before libgomp loads; the user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from ._cuda_status import cuda_available, cuda_status
from ._scheme import Scheme, SchemeLike, as_scheme, scheme_id, schemes
from .hf_quantizer import install_import_hook as _install_hf_import_hook

# After `import mxmoe`, AutoModelForCausalLM.from_pretrained understands quant_method "mxmoe" checkpoints, whether
# transformers was imported before or after mxmoe; this does not import transformers itself.
_install_hf_import_hook()

# public name -> module that defines it (imported on first use)
_LAZY_EXPORTS = {
    "QuantizedWeight": "mxmoe.quant",
    "QuantizedActivations": "mxmoe.quant",
    "quantize_rtn": "mxmoe.quant",
    "quantize_activations": "mxmoe.quant",
    "dequantize_activations": "mxmoe.quant",
    "GemmProblem": "mxmoe.gemm",
    "ref_group_gemm": "mxmoe.gemm",
    "hadamard_transform": "mxmoe.hadamard",
    "hadamard_matrix": "mxmoe.hadamard",
    "gptq": "mxmoe.gptq_solver",
    "Profile": "mxmoe.profiling",
    "profile": "mxmoe.profiling",
    "estimate_loss": "mxmoe.loss",
    "CostModel": "mxmoe.cost",
    "allocate_blocks": "mxmoe.allocation",
    "allocate": "mxmoe.allocation",
    "Plan": "mxmoe.allocation",
    "quantize": "mxmoe.model",
    "MxMoEExperts": "mxmoe.experts",
    "MxMoELinear": "mxmoe.experts",
    "rotate_model": "mxmoe.rotate",
    "save_quantized": "mxmoe.checkpoint",
    "load_quantized": "mxmoe.checkpoint",
    "perplexity": "mxmoe.evaluate",
    "plot_plan": "mxmoe.plot",
    "plot_pareto": "mxmoe.plot",
    "plot_kernels": "mxmoe.plot",
}

__all__ = ["Scheme", "SchemeLike", "as_scheme", "scheme_id", "schemes", "cuda_available", "cuda_status",
           "__version__", *_LAZY_EXPORTS]


def __getattr__(name: str) -> Any:
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'mxmoe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
