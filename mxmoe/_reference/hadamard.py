"""NumPy reference of the Hadamard area: explicit matrices built from the definitions (test oracle only).

Conventions (the ones csrc/mx_hadamard.h promises): H_n = kron(H_m, H_p) / sqrt(n), p = 2^k, Sylvester H_p by
Kronecker doubling of [[1, 1], [1, -1]], H_m from Paley I (m = q + 1, q = 3 mod 4) or Paley II (m = 2(q + 1),
q = 1 mod 4) over GF(q) with elements labelled by base-r digits and the monic irreducible modulus of smallest
coefficient code; signs from splitmix64; the transform is H_n @ diag(d).

This module shares no code with csrc/hadamard.c: field arithmetic is done on digit tuples, irreducibility is
decided by the absence of zero divisors in the quotient ring, and the transform is a dense matrix product.
"""
from __future__ import annotations

import itertools

import numpy as np

_MASK64 = (1 << 64) - 1


def splitmix64_signs(n: int, seed: int) -> np.ndarray:
    """int8 [n] of +-1: the top bit of each splitmix64 output (1 -> -1)."""
    out = np.empty(n, dtype=np.int8)
    state = seed & _MASK64
    for i in range(n):
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        out[i] = -1 if z >> 63 else 1
    return out


def sylvester(p: int) -> np.ndarray:
    """int64 [p, p] Sylvester matrix by Kronecker doubling (p a power of two)."""
    h = np.ones((1, 1), dtype=np.int64)
    while h.shape[0] < p:
        h = np.kron(np.array([[1, 1], [1, -1]], dtype=np.int64), h)
    assert h.shape[0] == p, f"p={p} is not a power of two"
    return h


def _prime_power(q: int) -> tuple[int, int] | None:
    for r in range(2, q + 1):
        if q % r == 0:
            e, rest = 0, q
            while rest % r == 0:
                rest //= r
                e += 1
            return (r, e) if rest == 1 else None
    return None


class _Field:
    """GF(r^e) on coefficient tuples (lowest degree first)."""

    def __init__(self, q: int):
        r, e = _prime_power(q)
        self.r, self.e, self.q = r, e, q
        self.elements = [self._digits(v) for v in range(q)]
        self.modulus = None
        if e > 1:
            for code in range(q):
                candidate = self._digits(code)  # low coefficients c_0..c_{e-1} of a monic x^e + ...
                self.modulus = candidate
                if self._is_field():
                    break
            else:
                raise AssertionError("no irreducible polynomial found")

    def _digits(self, v: int) -> tuple[int, ...]:
        return tuple((v // self.r**i) % self.r for i in range(self.e))

    def index(self, digits: tuple[int, ...]) -> int:
        return sum(d * self.r**i for i, d in enumerate(digits))

    def sub(self, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
        return tuple((x - y) % self.r for x, y in zip(a, b))

    def mul(self, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
        if self.e == 1:
            return ((a[0] * b[0]) % self.r,)
        prod = [0] * (2 * self.e - 1)
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                prod[i + j] += x * y
        # reduce with x^e = -(c_0 + c_1 x + ... + c_{e-1} x^{e-1})
        for deg in range(len(prod) - 1, self.e - 1, -1):
            c = prod[deg] % self.r
            prod[deg] = 0
            for i, m in enumerate(self.modulus):
                prod[deg - self.e + i] -= c * m
        return tuple(v % self.r for v in prod[: self.e])

    def _is_field(self) -> bool:
        zero = (0,) * self.e
        nonzero = self.elements[1:]
        return all(self.mul(a, b) != zero for a, b in itertools.product(nonzero, repeat=2))

    def character(self) -> np.ndarray:
        chi = -np.ones(self.q, dtype=np.int64)
        chi[0] = 0
        for a in self.elements[1:]:
            chi[self.index(self.mul(a, a))] = 1
        return chi


def jacobsthal(q: int) -> np.ndarray:
    """int64 [q, q], Q[a][b] = chi(a - b) over GF(q)."""
    field = _Field(q)
    chi = field.character()
    return np.array([[chi[field.index(field.sub(a, b))] for b in field.elements] for a in field.elements])


def paley1(m: int) -> np.ndarray:
    q = m - 1
    Q = jacobsthal(q)
    S = np.zeros((m, m), dtype=np.int64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = Q
    return np.eye(m, dtype=np.int64) + S


def paley2(m: int) -> np.ndarray:
    q = m // 2 - 1
    C = np.zeros((q + 1, q + 1), dtype=np.int64)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = jacobsthal(q)
    plus = np.array([[1, 1], [1, -1]], dtype=np.int64)
    zero_block = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    return np.kron(C, plus) + np.kron((C == 0).astype(np.int64), zero_block)


def base_matrix(m: int) -> np.ndarray:
    """int64 [m, m] unnormalised base: 1, Sylvester 2, Paley I if it applies, else Paley II."""
    if m in (1, 2):
        return sylvester(m)
    pp1 = _prime_power(m - 1)
    if m % 4 == 0 and pp1 and (m - 1) % 4 == 3:
        return paley1(m)
    pp2 = _prime_power(m // 2 - 1) if m % 4 == 0 else None
    if pp2 and (m // 2 - 1) % 4 == 1:
        return paley2(m)
    raise ValueError(f"no Paley matrix of order {m}")


def base_order(n: int) -> int:
    odd = n
    while odd % 2 == 0:
        odd //= 2
    if odd == 1:
        return 1
    m = 4 * odd
    while m <= n:
        if n % m == 0:
            try:
                base_matrix(m)
                return m
            except ValueError:
                pass
        m *= 2
    raise ValueError(f"n={n} unsupported")


def hadamard_matrix(n: int, seed: int | None = None) -> np.ndarray:
    """float64 [n, n] = kron(H_m, H_p) / sqrt(n) @ diag(d)."""
    m = base_order(n)
    H = np.kron(base_matrix(m), sylvester(n // m)).astype(np.float64) / np.sqrt(n)
    if seed is not None:
        H = H * splitmix64_signs(n, seed)[None, :]
    return H


def hadamard_transform(x: np.ndarray, axis: int = -1, seed: int | None = None) -> np.ndarray:
    """Reference y = H_n D x along ``axis`` (float64 inside, returned in x's dtype).  Up to n = 2048 a dense
    product with hadamard_matrix; above, the Kronecker identity (A kron B) x = vec(A X B^T) with X = x viewed as
    [m, p] (row-major, i = a*p + b), which avoids the n^2 matrix (1.6 GB at n = 14336)."""
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    n = moved.shape[-1]
    if n <= 2048:
        y = moved @ hadamard_matrix(n, seed).T
    else:
        m = base_order(n)
        p = n // m
        signed = moved * splitmix64_signs(n, seed) if seed is not None else moved
        X = signed.reshape(*moved.shape[:-1], m, p)
        A = base_matrix(m).astype(np.float64)
        B = sylvester(p).astype(np.float64)
        y = (A @ X @ B.T).reshape(moved.shape) / np.sqrt(n)
    return np.moveaxis(y, -1, axis).astype(x.dtype)
