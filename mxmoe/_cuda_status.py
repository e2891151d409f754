"""Whether the CUDA extension was built and can see a GPU, and why not."""
from __future__ import annotations

import functools
import json
import os


@functools.lru_cache(maxsize=1)
def cuda_status() -> str:
    """'ok: <device>' when mxmoe._cuda is built and a CUDA device is visible, else the reason it is not."""
    try:
        from . import _cuda  # type: ignore[attr-defined]
    except ImportError as exc:
        info_path = os.path.join(os.path.dirname(__file__), "_build_info.json")
        reason = ""
        if os.path.exists(info_path):
            with open(info_path) as f:
                reason = json.load(f).get("cuda_reason", "")
        return f"mxmoe._cuda is not available: {reason or exc}"
    ok, message = _cuda.device_status()
    return f"ok: {message}" if ok else f"mxmoe._cuda is built but unusable: {message}"


def cuda_available() -> bool:
    """True when mxmoe's CUDA kernels can run here."""
    return cuda_status().startswith("ok")
