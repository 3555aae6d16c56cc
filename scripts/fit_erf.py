"""Fit the float32 erf's polynomial: log(erfc(z) / t) + z^2 as a polynomial in t = 1 / (1 + z/2).

The coefficients printed here are those in minroberta/backend.py (_ERFC_LOG_POLY). A least-squares Chebyshev
fit of degree 10 to math.erfc on z in [0, 10]; then the float32 evaluation's maximum error is reported.
Run: python scripts/fit_erf.py
"""

import math

import numpy as np

from minroberta import backend

DEGREE = 10

z = np.linspace(0.0, 10.0, 400_001)
t = 1.0 / (1.0 + 0.5 * z)
target = np.log(np.array([math.erfc(v) for v in z]) / t) + z * z
fit = np.polynomial.chebyshev.Chebyshev.fit(t, target, DEGREE, domain=[0, 1])
coefficients = fit.convert(kind=np.polynomial.Polynomial, domain=[-1, 1], window=[-1, 1]).coef
print("coefficients, lowest degree first:")
print(",\n".join(repr(float(c)) for c in coefficients))
print(f"fit residual (max over z): {np.max(np.abs(fit(t) - target)):.3e}")

grid = np.linspace(-9, 9, 400_001).astype(np.float32)
reference = np.array([math.erf(float(v)) for v in grid])
backend.use("numpy")
error = np.abs(backend.erf(grid).astype(np.float64) - reference)
print(f"float32 erf in minroberta: max abs error {error.max():.3e} at x = {grid[error.argmax()]}")
