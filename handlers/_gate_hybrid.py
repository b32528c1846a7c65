"""The hybrid one-sided test: an anytime-valid mixture test at every look plus
one fixed-horizon Welch look at the deadline, with alpha split between them.

With share ``s`` (``sequential_alpha_share``), the mixture runs at
``alpha_seq = s * alpha`` and the deadline look at ``alpha_fix = (1 - s) *
alpha``. Their union is one test with the *hybrid p-value*

    p = min(p_seq / s, p_fix / (1 - s))      (p_fix only at the fixed look)

and ``P(p <= u at some look) <= s u + (1 - s) u = u`` for every u (Ville's
inequality for the mixture, one look for the Welch test, a union bound): a
p-process valid at any look, so Holm's step-down over KPIs and the
intersection-union proceed rule apply to it unchanged at ``alpha``. Its
bounds are the intersection of the two one-sided bounds (the mixture's at
``alpha_seq``, Welch's at ``alpha_fix``): ``p <= alpha`` exactly when that
bound excludes the null value.

Fixed looks and the extension: the fixed-horizon share ``1 - s`` is spent at
most twice, each look on the cumulative data at its own alpha (a union bound
again): at the original deadline (``final`` with an elapsed fraction below
:data:`FIXED_LOOK_BEFORE`) and, when the canary may be extended once, at the
extension's deadline (elapsed fraction at or above it). With an extension
planned, the deadline look gets ``(1 - e)`` of the fixed share and the
extension's deadline ``e`` (``extension_alpha_share``, default
:data:`DEFAULT_EXTENSION_SHARE`); without one the deadline look gets it all.
Family-wise: ``s + (1 - s)(1 - e) + (1 - s) e = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .sequential import boundary, optimal_r, p_value, t_quantile, t_sf, t_to_z, z_to_t

DEFAULT_SEQUENTIAL_SHARE = 0.3     # alpha_seq = 0.015, alpha_fix = 0.035 at 95 % (bench/GATE.md)
DEFAULT_MIXTURE_TUNING = 0.5       # the mixture's boundary is lowest at mid-window
FIXED_LOOK_BEFORE = 1.5
DEFAULT_EXTENSION_SHARE = 1.0 / 3.0   # of the fixed-horizon alpha, reserved for an extension's deadline


@dataclass(frozen=True)
class Split:
    """The alpha split and the mixture at one look."""
    alpha: float
    share: float
    fixed: bool          # this look runs the fixed-horizon tests
    r: float             # mixture r at this look
    z_seq: float         # the mixture's one-sided boundary at this look (normal scale)
    fix_weight: float = 1.0   # the part of the fixed-horizon share (1 - share) this look spends

    @property
    def alpha_seq(self) -> float:
        return self.share * self.alpha

    @property
    def fix_share(self) -> float:
        """The share of alpha the fixed look at this look spends."""
        return (1.0 - self.share) * self.fix_weight

    @property
    def alpha_fix(self) -> float:
        return self.fix_share * self.alpha

    @property
    def uses_fixed(self) -> bool:
        return self.fixed and self.fix_share > 0.0

    def hybrid(self, p_seq: float, p_fix: float | None) -> float:
        p = p_seq / self.share
        if p_fix is not None and self.uses_fixed:
            p = min(p, p_fix / self.fix_share)
        return min(p, 1.0)

    def half_width(self, se: float, df: float) -> float:
        """Half-width of the two one-sided bounds, each at ``1 - alpha``."""
        hw = se * z_to_t(self.z_seq, df)
        if self.uses_fixed:
            hw = min(hw, se * t_quantile(1.0 - self.alpha_fix, df))
        return hw


def make_split(alpha: float, share: float, tuning: float, frac: float, fixed: bool,
               fix_weight: float = 1.0) -> Split:
    a_seq = round(share * alpha, 12)
    r = optimal_r(a_seq) * frac / tuning
    return Split(alpha, share, fixed, r, boundary(r, a_seq), fix_weight)


def fixed_weight(extension_share: float, planned_extension: bool, extension_look: bool) -> float:
    """The part of the fixed-horizon share spent at a fixed look (see the module docstring)."""
    if extension_look:
        return extension_share
    return 1.0 - extension_share if planned_extension else 1.0


@dataclass(frozen=True)
class OneSided:
    """A one-sided test of ``theta > theta0`` from ``t = (estimate - theta0) / se``."""
    p_seq: float
    p_fix: float | None
    p: float             # hybrid


def greater(split: Split, t: float, df: float) -> OneSided:
    if math.isinf(t) or math.isnan(t):
        ps = pf = 0.0 if t > 0 else 1.0
    else:
        ps = p_value(t_to_z(t, df), split.r)
        pf = t_sf(t, df)
    pf_out = pf if split.uses_fixed else None
    return OneSided(ps, pf_out, split.hybrid(ps, pf_out))


def exact(split: Split, holds: bool) -> OneSided:
    """The effect is known exactly (no variance): the null holds or it does not."""
    p = 1.0 if holds else 0.0
    return OneSided(p, p if split.uses_fixed else None, p)
