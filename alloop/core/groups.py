"""Per-group parameters under a learned per-group regularity (paper §3.4.2, eq 99).

A grouped model adds to any base model a deviation per group i: an offset and slopes over the
standardized features, θ_Mi = (dw_i, db_i), so that F(x, i) = base(x) + z(x) dw_i + db_i. The
group's code is the last column of x (a float holding 0..G-1; -1 for a group unknown to the
model, which gets no deviation). The regularizer is eq 99 beside the base model's own:

    s R = s R_shared(θ_shared) + s Σ c_i² / α + Σ (c_i ‖θ_Mi‖² − |M_i| / (2α) · log(α c_i))

which is the paper's R(s, (c, θ, α)) divided by α: the code's loss is Σ (y − F)², not
α Σ (y − F)² (eq 15), and dividing the whole objective by the constant α moves neither θ* nor θ̇.
α = 1 / (2σ²) is the residual precision (eq 13, 15), held as a parameter leaf that nothing trains
(stop_gradient: zero gradient, zero tangent); ``training.fit`` sets it from the labels.

c_i = exp(γ_i): positive without a constraint, and for fixed θ the regularizer is convex in γ
(a sum of exponentials and the log term, which becomes linear), where in c itself a gradient step
can cross zero and leave the log undefined. The minimizer in c is the same whichever coordinate
holds it; only the tangent is reported back in c's units: dc_i/ds = c_i dγ_i/ds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from alloop.core.models import Model, Standardizer
from alloop.core.regularizers import Regularizer

DEFAULT_ALPHA = (
    0.5  # 1 / (2σ²) with σ² = 1: the residual precision of no fit on standardized targets
)


def codes(values, raw: jax.Array) -> jax.Array:
    """Group codes 0..G-1 of raw group values by lookup in the sorted ``values``; -1 if absent."""
    vocab = jnp.asarray(values, jnp.float32)
    idx = jnp.clip(jnp.searchsorted(vocab, raw), 0, vocab.shape[0] - 1)
    return jnp.where(vocab[idx] == raw, idx, -1).astype(jnp.int32)


def group_of(x: jax.Array, values=None) -> tuple[jax.Array, jax.Array]:
    """(features, code) of rows whose last column is the group: a code 0..G-1 itself, or a value
    looked up in the sorted ``values`` (the run's groups)."""
    raw = x[:, -1]
    code = jnp.round(raw).astype(jnp.int32) if values is None else codes(values, raw)
    return x[:, :-1], code


def grouped(base: Model, n_groups: int, values=None) -> Model:
    """``base`` plus a per-group offset and slopes; n_in is base's plus one (the group column).

    ``values``: the sorted group values the last column holds (None: it holds codes 0..G-1).
    """
    d, k = base.n_in, base.n_out
    vocab = None if values is None else np.asarray(values, np.float32)

    def init(key):
        return {
            "shared": base.init(key),
            "groups": {
                "dw": jnp.zeros((n_groups, d, k), jnp.float32),
                "db": jnp.zeros((n_groups, k), jnp.float32),
                "log_c": jnp.zeros((n_groups,), jnp.float32),
            },
            "alpha": jnp.asarray(DEFAULT_ALPHA, jnp.float32),
        }

    def apply(params, stats, x):
        feats, code = group_of(x, vocab)
        inner = Standardizer(stats.mean[:-1], stats.scale[:-1])
        z = (feats - inner.mean) / inner.scale
        known = (code >= 0)[:, None]
        idx = jnp.clip(code, 0, n_groups - 1)
        g = params["groups"]
        dev = jnp.einsum("nd,ndk->nk", z, g["dw"][idx]) + g["db"][idx]
        return base.apply(params["shared"], inner, feats) + jnp.where(known, dev, 0.0)

    return Model(f"grouped-{base.name}", init, apply, d + 1, k)


def group_sizes(params) -> int:
    """|M_i|: the number of per-group parameters under each c_i (offset and slopes)."""
    g = params["groups"]
    return int(np.prod(g["dw"].shape[1:])) + int(g["db"].shape[1])


def hierarchy(params, shared: Regularizer) -> Regularizer:
    """R(θ, s) whose s R is ``shared`` on θ_shared plus eq 99 (divided by α, module docstring)."""
    m = group_sizes(params)

    def value(p, s=None):
        if s is None:
            raise ValueError("the group hierarchy's R depends on s: pass it")
        g, alpha = p["groups"], jax.lax.stop_gradient(p["alpha"])
        c = jnp.exp(g["log_c"])
        sq = jnp.sum(g["dw"] ** 2, axis=(1, 2)) + jnp.sum(g["db"] ** 2, axis=1)
        inner = jnp.sum(c * sq - m / (2 * alpha) * (jnp.log(alpha) + g["log_c"]))
        return shared.value(p["shared"], s) + jnp.sum(c**2) / alpha + inner / s

    return Regularizer("group-hierarchy", value)


def prior_c(s: float, m: int) -> float:
    """The prior's mode of c_i for a group without data (θ_Mi = 0): argmin s c² − m/2 log c."""
    return float(np.sqrt(m / (4.0 * s)))


def residual_alpha(x: np.ndarray, y: np.ndarray, ridge: float = 1.0) -> float:
    """α = n / (2 RSS) of a pooled ridge fit of the standardized targets (eq 13), floored at 1/2.

    The pooled fit leaves the groups' effects in its residuals, so this underestimates the noise
    precision; α only scales the hyperprior on the c_i (s c² = s (αc)² / α²), which the data's
    ‖θ_Mi‖² dominate as labels come in. The floor is the precision of fitting nothing.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64).reshape(len(x), -1)
    if len(x) < 2:
        return DEFAULT_ALPHA
    z = (x - x.mean(0)) / np.where(x.std(0) > 1e-12, x.std(0), 1.0)
    a = np.c_[z, np.ones(len(z))]
    reg = ridge * np.diag([1.0] * z.shape[1] + [0.0])
    theta = np.linalg.solve(a.T @ a + reg, a.T @ y)
    mse = float(np.mean((a @ theta - y) ** 2))
    return max(1.0 / (2.0 * max(mse, 1e-6)), DEFAULT_ALPHA)


def with_alpha(params, alpha: float):
    """``params`` with the residual precision α set (the only leaf training does not move)."""
    return {**params, "alpha": jnp.asarray(alpha, jnp.float32)}


def at_prior(params, s: float, labeled_codes, tangent=None):
    """Groups without labels put at the prior: θ_Mi = 0 and c_i at the prior's mode for ``s``.

    Their optimum is exactly that (no loss term reaches them), so training starts them there
    rather than waiting for the optimizer to walk c_i to it. With ``tangent`` given, returns
    (params, tangent) with theirs at the prior's too: θ̇_Mi = 0, dγ_i/ds = d log c0/ds = −1/(2s).
    """
    g = params["groups"]
    n = g["log_c"].shape[0]
    seen = np.zeros(n, bool)
    codes = np.asarray(labeled_codes, np.int64)
    seen[codes[(codes >= 0) & (codes < n)]] = True
    log_c0 = np.float32(np.log(prior_c(s, group_sizes(params))))
    keep = jnp.asarray(seen)
    new = {
        "dw": jnp.where(keep[:, None, None], g["dw"], 0.0),
        "db": jnp.where(keep[:, None], g["db"], 0.0),
        "log_c": jnp.where(keep, g["log_c"], log_c0),
    }
    params = {**params, "groups": new}
    if tangent is None:
        return params
    t = tangent["groups"]
    new_t = {
        "dw": jnp.where(keep[:, None, None], t["dw"], 0.0),
        "db": jnp.where(keep[:, None], t["db"], 0.0),
        "log_c": jnp.where(keep, t["log_c"], np.float32(-0.5 / s)),
    }
    return params, {**tangent, "groups": new_t}


def pseudo_regularities(params, tangent) -> tuple[np.ndarray, np.ndarray]:
    """(c_i, dc_i/ds) per group, from γ = log c and its tangent: dc/ds = c dγ/ds."""
    c = np.exp(np.asarray(params["groups"]["log_c"], np.float64))
    return c, c * np.asarray(tangent["groups"]["log_c"], np.float64)


def is_grouped(params) -> bool:
    return isinstance(params, dict) and "groups" in params and "shared" in params
