"""Which curvature should the tangent of an MLP use? The measurements behind docs/curvature.md.

Small MLPs (8→32→32→1, tanh or gelu) are trained with Adam on a synthetic nonlinear regression, with
L2 on the weights only or on every parameter. For each curvature choice (Hessian or Gauss-Newton,
with damping λ) this reports, at the trained θ:

- the smallest eigenvalue of the true Hessian and of the chosen curvature (dense, float64);
- whether CG on the chosen curvature converges (float64, relative residual 1e-8);
- the SGDF tangent's relative residual w.r.t. its own curvature at the end of training, its largest
  value during training, and after a drift check: 500 more full-batch steps at a tenth of the peak
  learning rate (no minibatch noise, so a converging tangent settles and one iterated on negative
  curvature grows), with the growth of its norm over those steps;
- the cosine of the SGDF tangent to the exact solve of its own curvature;
- Spearman rank correlations of the SLD scores on a pool of 2000 rows: SGDF vs its own exact solve,
  and each choice vs a common reference (the undamped Gauss-Newton exact solve where it is
  defined, i.e. with L2 on every parameter).

    python benchmarks/curvature_study.py            # all four blocks (~6-10 min on 2 cores)
    python benchmarks/curvature_study.py --quick    # one block
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from alloop.core import losses, models, objective, regularizers, scorers, sgdf, tangents

CHOICES = [
    ("hessian", 0.0),
    ("gauss-newton", 0.0),
    ("gauss-newton", 1e-3),
    ("gauss-newton", 3e-3),
    ("gauss-newton", 1e-2),
    ("hessian", 1e-2),
]


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def flat(tree) -> np.ndarray:
    return np.asarray(
        ravel_pytree(jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree))[0]
    )


def cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def make_problem(act: str, reg: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 2000, 8)).astype(np.float32)
    f = (
        np.sin(1.5 * x[:, 0])
        + x[:, 1] * x[:, 2]
        + 0.5 * np.tanh(x[:, 3] - x[:, 4])
        + 0.3 * x[:, 5] ** 2
    )
    y = f + 0.2 * rng.normal(size=f.shape)
    y = ((y - y[:n].mean()) / y[:n].std()).astype(np.float32)[
        :, None
    ]  # as the app does: standardized targets
    model = models.mlp(8, 1, hidden=(32, 32), activation=act)
    p0 = model.init(jax.random.PRNGKey(seed))
    r = (
        regularizers.l2_weights(p0)
        if reg == "weights"
        else regularizers.l2(jax.tree_util.tree_map(np.ones_like, p0))
    )
    prob = objective.Problem(
        model, losses.squared, r, models.fit_standardizer(x[:n].mean(0), x[:n].std(0))
    )
    return prob, objective.make_data(x[:n], y[:n]), x[n:]


def dense_curvature(prob, params, s, data) -> np.ndarray:
    """The curvature matrix of f/n (float64), damping included."""
    with jax.enable_x64(True):
        pr, p, s_, d = tangents._promote(prob, params, s, data, jnp.float64)
        f0, unravel = ravel_pytree(p)
        g = lambda f: ravel_pytree(tangents.gradient(pr, unravel(f), s_, d))[0]  # noqa: E731
        rho = ravel_pytree(tangents.mixed_derivative(pr, p, s_, d))[0]
        return np.asarray(jax.jacfwd(g)(f0)), np.asarray(rho)


def block(
    act: str, reg: str, n: int, s: float, cfg: sgdf.TrainConfig, extra_epochs: int
) -> list[dict]:
    prob, data, pool = make_problem(act, reg, n)
    rows = []
    base = None
    for curv, damp in CHOICES:
        pr = prob._replace(curvature=curv, damping=damp)
        resid = jax.jit(lambda p, t: tangents._residual(pr, p, t, jnp.float32(s), data))  # noqa: B023
        during = []

        def watch(st, rep, during=during, resid=resid):
            during.append(float(resid(st.params, st.tangent)))

        t0 = time.perf_counter()
        st, reps = sgdf.fit(pr, data, s, cfg, on_epoch=watch)
        if base is None:
            base = st.params
            hess, rho = dense_curvature(prob, st.params, s, data)
            gn, _ = dense_curvature(prob._replace(curvature="gauss-newton"), st.params, s, data)
            eig_h, eig_gn = np.linalg.eigvalsh(hess), np.linalg.eigvalsh(gn)
        mat = (hess if curv == "hessian" else gn) + damp * np.eye(len(rho))
        exact = np.linalg.solve(mat, -rho)
        cg = tangents.cg(pr, st.params, s, data, tol=1e-8, maxiter=2000)
        # drift: continue with full-batch steps (no minibatch noise) at a tenth of the peak learning
        # rate, Adam's state carried on: a tangent iterated on negative curvature grows, a
        # converging one settles
        cont_cfg = sgdf.TrainConfig(
            **{
                **cfg.to_dict(),
                "schedule": "constant",
                "lr": 0.1 * cfg.lr,
                "batch_size": n,
                "epochs": cfg.epochs + extra_epochs,
            }
        )
        st2, reps2 = sgdf.fit(pr, data, s, cont_cfg, state=st, start_epoch=cfg.epochs)
        _, unravel = ravel_pytree(
            jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), st.params)
        )
        sld = lambda t: np.asarray(scorers.sld(prob, st.params, t, [1.0])(jnp.asarray(pool)))  # noqa: E731, B023
        rows.append(
            dict(
                act=act,
                reg=reg,
                curvature=curv,
                damping=damp,
                eig_h_min=eig_h[0],
                eig_h_max=eig_h[-1],
                n_neg=int((eig_h < 0).sum()),
                eig_c_min=(eig_h[0] if curv == "hessian" else eig_gn[0]) + damp,
                cg_iterations=cg.iterations,
                cg_residual=cg.residual,
                res_end=during[-1],
                res_max=max(during),
                res_cont=float(resid(st2.params, st2.tangent)),
                norm_end=reps[-1].tangent_norm,
                norm_cont=reps2[-1].tangent_norm,
                norm_exact=float(np.linalg.norm(exact)),
                warnings=sgdf.tangent_warnings(reps + reps2),
                growth_cont=reps2[-1].tangent_norm / reps[-1].tangent_norm,
                cos_exact=cosine(flat(st.tangent), exact),
                sld_sgdf=sld(st.tangent),
                sld_exact=sld(unravel(exact.astype(np.float32))),
                seconds=time.perf_counter() - t0,
            )
        )
    ref = next(r for r in rows if r["curvature"] == "gauss-newton" and r["damping"] == 0.0)
    for r in rows:
        r["rho_own"] = spearman(r["sld_sgdf"], r["sld_exact"])
        r["rho_ref_exact"] = spearman(r["sld_exact"], ref["sld_exact"])
        r["rho_ref_sgdf"] = spearman(r["sld_sgdf"], ref["sld_exact"])
    return rows


def cg_text(r) -> str:
    if r["cg_residual"] < 1e-6:
        return f"yes ({r['cg_iterations']} it)"
    if r["eig_c_min"] <= 0:
        return f"no: negative curvature at it {r['cg_iterations']}"
    return f"no ({r['cg_iterations']} it, res {r['cg_residual']:.0e})"


def print_table(rows: list[dict]) -> None:
    print(
        "| model, L2 on | curvature | λ | min eig H (max) | min eig C | CG converges | SGDF "
        "residual: end / max during / after drift check (norm ×) | cos(SGDF, exact) | Spearman "
        "SLD: SGDF vs exact | vs undamped GN (exact / SGDF) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        undamped_ok = r["reg"] == "all"
        ref = (
            f"{r['rho_ref_exact']:.2f} / {r['rho_ref_sgdf']:.2f}" if undamped_ok else "(undefined)"
        )
        print(
            f"| {r['act']}, {r['reg']} | {r['curvature']} | {r['damping']:g} | "
            f"{r['eig_h_min']:.1e} ({r['eig_h_max']:.0f}; {r['n_neg']} neg.) | "
            f"{r['eig_c_min']:.1e} | {cg_text(r)} | {r['res_end']:.2f} / {r['res_max']:.0f} / "
            f"{r['res_cont']:.2f} ({r['growth_cont']:.2g}×) | {r['cos_exact']:.3f} | "
            f"{r['rho_own']:.2f} | {ref} |"
        )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--s", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument(
        "--extra", type=int, default=500, help="full-batch steps after training (the drift check)"
    )
    args = ap.parse_args(argv)
    cfg = sgdf.TrainConfig(
        optimizer="adam", lr=1e-2, epochs=args.epochs, batch_size=64
    )  # the app's defaults
    blocks = (
        [("tanh", "weights")]
        if args.quick
        else [("tanh", "weights"), ("tanh", "all"), ("gelu", "weights"), ("gelu", "all")]
    )
    rows = []
    for act, reg in blocks:
        t0 = time.perf_counter()
        rows += block(act, reg, args.n, args.s, cfg, extra_epochs=args.extra)
        print(f"# {act}/{reg}: {time.perf_counter() - t0:.0f}s", flush=True)
    print(
        f"\nn={args.n}, s={args.s}, Adam lr {cfg.lr}, {cfg.epochs} epochs of batch "
        f"{cfg.batch_size}, cosine schedule; drift check {args.extra} full-batch steps\n"
    )
    print_table(rows)
    for r in rows:
        if r["warnings"]:
            print(f"- {r['act']}/{r['reg']} {r['curvature']} λ={r['damping']:g}: {r['warnings']}")


if __name__ == "__main__":
    main()
