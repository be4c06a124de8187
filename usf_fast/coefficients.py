"""Host math (float64) of one USF step: the weights of x_t = a·x_s + Σ_j w_j·M_j.

One step from start point s to target t, h = λ_t − λ_s, expansion order n (docs/design.md, "The math"):

    data:  x_t = (σ_t/σ_s) x_s + α_t Σ_{k<n} h^{k+1} φ_{k+1}(−h) D_k     (M = x̂0)
    noise: x_t = (α_t/α_s) x_s − σ_t Σ_{k<n} h^{k+1} φ_{k+1}(h)  E_k     (M = ε̂)

The derivatives D_k (k ≥ 1) come from the m active points j: solve
Σ_{q=1..m} (λ_j − λ_s)^q / q! · D_q = M_j − M_s and keep D_1..D_{n−1}. D_1 is multiplied by the
relaxation factor ρ and D_2 by `d2_scale`. Everything is linear in the M_j, so the step reduces to
scalar weights, which is what every executor consumes.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["phi", "relax_factor", "RELAX_KINDS", "update_weights"]

#: First-derivative relaxations. z = −h for data prediction, +h for noise prediction.
#:   taylor   ρ = 1
#:   linear   ρ = 1 + c·h                         (c searchable)
#:   midpoint ρ = φ1(z) / (2 φ2(z))               DPM-Solver(++) midpoint form, = UniPC B(h)=e^z−1 ("bh2")
#:   bh2      same as midpoint (UniPC's name)
#:   bh1      ρ = 1 / (2 φ2(z))                   UniPC B(h)=z ("bh1")
RELAX_KINDS = ("taylor", "linear", "midpoint", "bh1", "bh2")

_SERIES_TERMS = 30


def phi(k: int, z: float) -> float:
    """φ_k(z) = Σ_{j≥0} z^j/(j+k)!  (φ_0 = e^z, φ_1 = (e^z−1)/z, φ_{k+1} = (φ_k − 1/k!)/z).

    The series is used for |z| < 1, where the recursion would cancel catastrophically.
    """
    if k < 0:
        raise ValueError(f"phi: k={k} must be >= 0")
    z = float(z)
    if k == 0:
        return math.exp(z)
    if abs(z) < 1.0:
        term = 1.0 / math.factorial(k)
        total = term
        for j in range(1, _SERIES_TERMS):
            term *= z / (j + k)
            total += term
        return total
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def relax_factor(kind: str, coef: float, h: float, z: float) -> float:
    if kind == "taylor":
        return 1.0
    if kind == "linear":
        return 1.0 + coef * h
    if kind in ("midpoint", "bh2"):
        return phi(1, z) / (2.0 * phi(2, z))
    if kind == "bh1":
        return 1.0 / (2.0 * phi(2, z))
    raise ValueError(f"relax={kind!r}: must be one of {', '.join(RELAX_KINDS)}")


def update_weights(lambda_s: float, lambda_t: float, lambda_points, *, alpha_s: float, sigma_s: float,
                   alpha_t: float, sigma_t: float, prediction: str, order: int, relax: str = "taylor",
                   relax_coef: float = 0.0, d2_scale: float = 1.0):
    """Weights of one step, all float64.

    Args:
        lambda_s, lambda_t: λ at the start and target times (λ_t > λ_s).
        lambda_points: λ of the m active points (m ≥ order − 1), distinct and ≠ λ_s.
        prediction: "data" (M = x̂0) or "noise" (M = ε̂).
    Returns:
        (a, w_s, w_points): x_t = a·x_s + w_s·M_s + Σ_j w_points[j]·M_j.
    """
    lam_p = np.asarray(lambda_points, dtype=np.float64).reshape(-1)
    m = lam_p.size
    n = int(order)
    if m < n - 1:
        raise ValueError(f"order={n} needs {n - 1} active points, got {m}")
    h = float(lambda_t - lambda_s)
    if prediction == "data":
        a = sigma_t / sigma_s
        z, pref = -h, alpha_t
    elif prediction == "noise":
        a = alpha_t / alpha_s
        z, pref = h, -sigma_t
    else:
        raise ValueError(f"prediction={prediction!r}: must be 'data' or 'noise'")
    # Work with r_j = (λ_j − λ_s)/h and h-scaled derivatives D̃_q = h^q D_q for conditioning:
    # Σ_q r_j^q/q! D̃_q = M_j − M_s and the k-th Taylor term is pref·h·φ_{k+1}(z)·D̃_k.
    c0 = pref * h * phi(1, z)
    w_p = np.zeros(m)
    if n > 1:
        r = (lam_p - lambda_s) / h
        A = np.stack([r ** q / math.factorial(q) for q in range(1, m + 1)], axis=1)  # (m points, m derivs)
        c = np.array([pref * h * phi(k + 1, z) for k in range(1, n)])
        c[0] *= relax_factor(relax, relax_coef, h, z)
        if n > 2:
            c[1] *= d2_scale
        # Taylor sum = c · D̃[:n−1] = c · (A^{-1} ΔM)[:n−1] = (A^{-T} c_pad) · ΔM
        c_pad = np.zeros(m)
        c_pad[: n - 1] = c
        try:
            w_p = np.linalg.solve(A.T, c_pad)
        except np.linalg.LinAlgError:
            raise ValueError(f"derivative points λ={lam_p.tolist()} (start λ={lambda_s!r}) coincide to float precision: "
                             "the divided differences are singular; use distinct times") from None
    w_s = c0 - w_p.sum()
    return float(a), float(w_s), w_p
