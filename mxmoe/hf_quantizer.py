"""transformers integration: ``AutoModelForCausalLM.from_pretrained(out_dir)`` for mxmoe checkpoints.

:func:`register` adds ``quant_method: "mxmoe"`` to transformers' quantization registries
(``register_quantization_config`` + ``register_quantizer``).  It is idempotent and imports transformers, so it is
*not* run by ``import mxmoe`` (which must stay cheap); it runs when mxmoe.model / mxmoe.checkpoint are imported
(``mxmoe.quantize``, ``save_quantized``, ``load_quantized``).  :func:`install_import_hook` is the cheap hook for
``mxmoe/__init__.py``: it registers at once if transformers' quantizer registry is already imported, else installs
a one-shot import hook that registers right after transformers loads it.

The quantizer's job at load time: before the weights load, swap the modules listed in
``quantization_config["modules"]`` for empty :class:`~mxmoe.MxMoEExperts` / ``MxMoELinear`` of the recorded layout
(their ragged buffers are then filled from the safetensors file by name); after loading, verify every packed buffer
against the checksum written at save time and attach ``model.mxmoe_plan``.
"""
from __future__ import annotations

from typing import Any

_REGISTERED = False
_WATCHED_MODULE = "transformers.quantizers.auto"


class _RegisterOnImport:
    """A one-shot sys.meta_path finder: when transformers' quantizer registry is imported, register mxmoe's
    quantizer right after it loads.  Installed by :func:`install_import_hook`; finds nothing itself."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _WATCHED_MODULE:
            return None
        import importlib.machinery
        import sys
        sys.meta_path.remove(self)  # let the normal finders locate the real module
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            original_exec(module)
            try:
                register()
            except Exception:  # never break importing transformers; quantize()/load paths register again
                pass
        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install_import_hook() -> None:
    """Cheap (no transformers import): make ``AutoModelForCausalLM.from_pretrained`` understand mxmoe checkpoints
    whether transformers is imported before or after mxmoe.  Meant for ``mxmoe/__init__.py``."""
    import sys
    if _REGISTERED:
        return
    if _WATCHED_MODULE in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


def register() -> None:
    """Register the "mxmoe" quantization config and quantizer with transformers (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                              register_quantization_config, register_quantizer)
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    if "mxmoe" in AUTO_QUANTIZATION_CONFIG_MAPPING and "mxmoe" in AUTO_QUANTIZER_MAPPING:
        _REGISTERED = True
        return

    @register_quantization_config("mxmoe")
    class MxMoEConfig(QuantizationConfigMixin):
        """quantization_config of an mxmoe checkpoint (see mxmoe.checkpoint for the fields)."""

        def __init__(self, quant_method: str = "mxmoe", version: int | None = None, plan: Any = None,
                     modules: dict | None = None, checksums: dict | None = None, **extra: Any):
            self.quant_method = "mxmoe"
            self.version = version
            self.plan = plan
            self.modules = modules or {}
            self.checksums = checksums or {}
            for key, value in extra.items():
                setattr(self, key, value)

    @register_quantizer("mxmoe")
    class MxMoEHfQuantizer(HfQuantizer):
        requires_calibration = True  # mxmoe checkpoints are produced by mxmoe.quantize, never on the fly

        def validate_environment(self, *args: Any, **kwargs: Any) -> None:
            device_map = kwargs.get("device_map")
            if isinstance(device_map, dict) and len(set(map(str, device_map.values()))) > 1:
                raise ValueError("mxmoe checkpoints load on one device (got a device_map over several)")

        def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
            from .checkpoint import FORMAT_VERSION, install_skeleton
            config = self.quantization_config.to_dict()
            if config.get("version") != FORMAT_VERSION:
                raise ValueError(f"mxmoe checkpoint format version {config.get('version')!r}, this mxmoe reads "
                                 f"version {FORMAT_VERSION}")
            install_skeleton(model, config, kwargs.get("dtype"))
            return model

        def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
            from .checkpoint import attach_plan, verify_module_checksums
            config = self.quantization_config.to_dict()
            verify_module_checksums(model, config, "from_pretrained")
            attach_plan(model, config)
            return model

        def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
            return False  # save with mxmoe.save_quantized (atomic, checksummed)

        @property
        def is_trainable(self) -> bool:
            return False

    _REGISTERED = True
