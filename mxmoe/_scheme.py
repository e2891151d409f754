"""Scheme objects: a thin, typed view of the C scheme table (csrc/mx_scheme.h owns every fact)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

try:
    from . import _C
except ImportError as exc:  # the C core is part of every install; say how to get it rather than a bare ImportError
    raise ImportError("mxmoe._C (the C core) is not built: run `make install` or "
                      "`pip install --no-build-isolation -e .` in the mxmoe checkout") from exc

_FMT_NAMES = {_C.FMT_INT: "int", _C.FMT_FP8_E4M3: "fp8"}
_FMT_CODES = {v: k for k, v in _FMT_NAMES.items()}


@dataclass(frozen=True)
class Scheme:
    """One quantization scheme, e.g. ``Scheme.parse("w4a16_g128_asym")``.

    ``group_size`` is -1 for one scale per output channel.  ``fmt`` is "int" or "fp8" (e4m3 for 8-bit
    activations, and for the weights when ``w_bits == 8``).
    """

    w_bits: int
    a_bits: int
    group_size: int
    symmetric: bool
    fmt: str = "int"

    @staticmethod
    def parse(name: Union[str, "Scheme"]) -> "Scheme":
        """Parse a scheme name; ValueError (listing the accepted forms) for malformed or unsupported names."""
        if isinstance(name, Scheme):
            return name
        if not isinstance(name, str):
            raise TypeError(f"a scheme is a Scheme or its name, got {type(name).__name__}")
        w, a, g, sym, fmt = _C.scheme_parse(name)
        return Scheme(w, a, g, bool(sym), _FMT_NAMES[fmt])

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        """The (w_bits, a_bits, group_size, symmetric, fmt) tuple the C binding takes."""
        return (self.w_bits, self.a_bits, self.group_size, int(self.symmetric), _FMT_CODES[self.fmt])

    @property
    def name(self) -> str:
        return _C.scheme_format(self.as_tuple())

    def __str__(self) -> str:
        return self.name

    @property
    def bits_per_weight(self) -> float:
        """Weight bits plus f16 scale (and zero-point) overhead per weight; per-channel overhead ignored."""
        return _C.scheme_bits_per_weight(self.as_tuple(), 0)

    def bits_for(self, in_features: int) -> float:
        """Bits per weight for a matrix with ``in_features`` columns (counts the per-channel scale too)."""
        return _C.scheme_bits_per_weight(self.as_tuple(), int(in_features))

    @property
    def quantizes_activations(self) -> bool:
        return self.a_bits < 16

    @property
    def is_candidate(self) -> bool:
        """True when the scheme is in the C candidate table (has a GPU kernel)."""
        return self.name in _TABLE_BY_NAME

    @property
    def fast_on(self) -> tuple[str, ...]:
        """GPU architectures ('sm80', 'sm89', 'sm90') on which this scheme runs at tensor-core speed."""
        row = _TABLE_BY_NAME.get(self.name)
        if row is None:
            return ()
        mask = row[3]
        return tuple(n for n, bit in (("sm80", _C.ARCH_SM80), ("sm89", _C.ARCH_SM89), ("sm90", _C.ARCH_SM90))
                     if mask & bit)


SchemeLike = Union[str, Scheme]
_TABLE_BY_NAME = {row[1]: row for row in _C.SCHEME_TABLE}


def as_scheme(scheme: SchemeLike) -> Scheme:
    """Every API that takes a scheme accepts a Scheme or its name; this normalises both."""
    return Scheme.parse(scheme)


def schemes(weight_only: bool | None = None) -> list[Scheme]:
    """The candidate schemes (the C table, in its order). ``weight_only=True`` keeps a16 schemes only,
    ``False`` keeps schemes that quantize activations."""
    out = [Scheme.parse(row[1]) for row in _C.SCHEME_TABLE]
    if weight_only is True:
        out = [s for s in out if not s.quantizes_activations]
    elif weight_only is False:
        out = [s for s in out if s.quantizes_activations]
    return out


def scheme_id(scheme: SchemeLike) -> int:
    """Index of a candidate scheme in the C table (the id kernels dispatch on); ValueError otherwise."""
    name = as_scheme(scheme).name
    row = _TABLE_BY_NAME.get(name)
    if row is None:
        raise ValueError(f"scheme {name!r} is not a candidate scheme; candidates: {sorted(_TABLE_BY_NAME)}")
    return row[0]
