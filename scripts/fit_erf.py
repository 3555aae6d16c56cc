"""Fit the float32 erfc used by minroberta's fast path, and report its error.

erfc(z) ~= t * P(t) * exp(-z^2),  t = 1 / (1 + p z),  z >= 0, P of degree 5 (the form of Hastings'
approximations). For each p on a grid, P's coefficients come from a weighted least-squares fit iterated
towards the minimax absolute error (Lawson's reweighting); the best p is kept. The printed constants are
those of minroberta/engine/gelu32.py (_ERFC_P, _ERFC_POLY). Run: python scripts/fit_erf.py
"""

import math

import numpy as np

DEGREE = 5

z = np.linspace(0.0, 9.0, 200_001)
erfc = np.array([math.erfc(v) for v in z])
best = None
for p in np.linspace(0.25, 0.6, 71):
    t = 1.0 / (1.0 + p * z)
    target = erfc * np.exp(z * z) / t              # the polynomial to fit
    scale = t * np.exp(-z * z)                      # turns an error in P into an absolute error in erfc
    basis = np.vander(t, DEGREE + 1, increasing=True)
    weights = scale.copy()
    for _ in range(30):
        coefficients, *_ = np.linalg.lstsq(basis * weights[:, None], target * weights, rcond=None)
        error = np.abs((basis @ coefficients - target) * scale)
        weights *= np.sqrt(error / error.max() + 1e-3)
    if best is None or error.max() < best[0]:
        best = (error.max(), p, coefficients)
error, p, coefficients = best
print(f"_ERFC_P = {float(p)!r}")
print("_ERFC_POLY = (" + ", ".join(repr(float(c)) for c in coefficients) + ")   # lowest degree first")
print(f"max |erfc error| in float64: {error:.2e}")

from minroberta import backend  # noqa: E402  (after the fit, which needs nothing of the package)
from minroberta.ops import erf as minroberta_erf, normal_cdf_and_pdf  # noqa: E402

backend.use("numpy")
grid = np.linspace(-12, 12, 200_001).astype(np.float32)
cdf, _ = normal_cdf_and_pdf(grid)
reference = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in grid])
print(f"minroberta float32 normal CDF: max abs error {np.max(np.abs(cdf - reference)):.2e}")
erf = minroberta_erf(grid)
reference = np.array([math.erf(float(v)) for v in grid])
print(f"minroberta float32 erf: max abs error {np.max(np.abs(erf - reference)):.2e}")
