"""The Gaussian process over lift observations (each one a difference ``g(canary) - g(control)``).

Private to :mod:`vvtv_autopilot.handlers.optimizer`, whose docstring describes the model.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg as _la

from ._optimizer_types import OptimizerSettings


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


class DiffGP:
    """GP on a latent g with observations y_i = g(a_i) - g(b_i) + noise."""

    def __init__(self, a: np.ndarray, b: np.ndarray, y: np.ndarray, noise_var: np.ndarray | None,
                 s: OptimizerSettings, min_scale: float = 0.0, max_lengthscale: float = math.inf):
        self.a, self.b, self.y = a, b, y
        n = len(y)
        scale = max(float(np.sqrt(np.mean(y * y))) if n else 0.0, 3.0 * s.default_noise_sd, min_scale, 1e-6)
        sf_grid = [scale * m for m in (1.0, 2.0, 4.0)]
        ells = [ell for ell in s.lengthscales if ell <= max_lengthscale] or [min(s.lengthscales)]
        noise_grid = [noise_var] if noise_var is not None else [
            np.full(n, (s.default_noise_sd * r) ** 2) for r in (0.3, 1.0, 3.0)]
        best = None
        for ell in ells:
            base = self._cov(ell)
            for sf in sf_grid:
                kyy = sf * sf * base
                for nv in noise_grid:
                    K = kyy + np.diag(nv + 1e-10 * sf * sf)
                    try:
                        L = _la.cholesky(K, lower=True)
                    except _la.LinAlgError:
                        continue
                    alpha = _la.cho_solve((L, True), y)
                    ll = -0.5 * float(y @ alpha) - float(np.log(np.diag(L)).sum())
                    if best is None or ll > best[0] + 1e-12:
                        best = (ll, ell, sf, L, alpha, nv)
        assert best is not None
        _, self.ell, self.sf, self.L, self.alpha, self.noise_var = best

    def _k(self, u: np.ndarray, v: np.ndarray, ell: float) -> np.ndarray:
        return np.exp(-_sqdist(u, v) / (2.0 * ell * ell))

    def _cov(self, ell: float) -> np.ndarray:
        a, b = self.a, self.b
        return self._k(a, a, ell) - self._k(a, b, ell) - self._k(b, a, ell) + self._k(b, b, ell)

    def _cross(self, x: np.ndarray) -> np.ndarray:
        """cov(g(x), y) for each row of x: (m, n)."""
        return self.sf ** 2 * (self._k(x, self.a, self.ell) - self._k(x, self.b, self.ell))

    def diff(self, x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of g(x) - g(ref) for each row of x."""
        r = self._cross(x) - self._cross(ref[None, :])
        mean = r @ self.alpha
        prior = 2.0 * self.sf ** 2 * (1.0 - np.exp(-_sqdist(x, ref[None, :])[:, 0] / (2.0 * self.ell ** 2)))
        v = _la.solve_triangular(self.L, r.T, lower=True)
        var = np.maximum(prior - (v * v).sum(0), 0.0)
        return mean, np.sqrt(var)

    def diff_cov(self, x: np.ndarray, p: np.ndarray, z: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Posterior covariance of g(x_i) - g(p) with g(z_j) - g(q) for each pair of rows: (m, l)."""
        k, ell, sf2 = self._k, self.ell, self.sf ** 2
        prior = sf2 * (k(x, z, ell) - k(x, q[None, :], ell) - k(p[None, :], z, ell) + k(p[None, :], q[None, :], ell))
        vx = _la.solve_triangular(self.L, (self._cross(x) - self._cross(p[None, :])).T, lower=True)
        vz = _la.solve_triangular(self.L, (self._cross(z) - self._cross(q[None, :])).T, lower=True)
        return prior - vx.T @ vz

    def shrunk_sd(self, x: np.ndarray, c: np.ndarray, z: np.ndarray, q: np.ndarray, sd_z: np.ndarray) -> np.ndarray:
        """Posterior sd of g(z_j) - g(q) once a canary at x_i is measured against c (one more lift,
        with this GP's typical noise): (m, l). The variance update does not depend on the value."""
        var_x = np.maximum(np.diag(self.diff_cov(x, c, x, c)), 0.0) + float(np.median(self.noise_var))
        cov = self.diff_cov(x, c, z, q)
        return np.sqrt(np.maximum(sd_z[None, :] ** 2 - cov * cov / np.maximum(var_x, 1e-18)[:, None], 0.0))
