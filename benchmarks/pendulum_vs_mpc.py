"""Pendulum swing-up (Amos et al. 2018): difftori's newton vs mpc.pytorch (box-DDP), and the test reference.

Needs ``mpc==0.0.6`` (``pip install --no-deps mpc==0.0.6``; its metadata pins numpy<2). Solves the 32 initial
states of ``tests/optim/pendulum.py`` with both solvers, prints the per-sample agreement and wall times, and
with ``--write-reference`` stores mpc.pytorch's solutions as ``tests/optim/data/pendulum_mpc_reference.json``
(the regression test compares against that file, so the test suite does not need mpc).
Usage: python benchmarks/pendulum_vs_mpc.py [--write-reference] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from difftori.optim import TrajOptimizer  # noqa: E402
from tests.optim import pendulum as P  # noqa: E402


def solve_mpc(x0: torch.Tensor) -> torch.Tensor:
    from mpc import mpc
    from mpc.env_dx import pendulum
    from mpc.mpc import GradMethods, QuadCost

    B = x0.shape[0]
    dx = pendulum.PendulumDx(P.params(), simple=True)
    q, p = P.cost_weights()
    Q = torch.diag(q).expand(P.T, B, 4, 4).contiguous()
    pp = p.expand(P.T, B, 4).contiguous()
    with torch.enable_grad():  # mpc.pytorch's AUTO_DIFF needs grad mode
        _, u, _ = mpc.MPC(3, 1, P.T, u_init=torch.zeros(P.T, B, 1, dtype=P.DT), u_lower=-P.U_MAX, u_upper=P.U_MAX,
                          lqr_iter=100, verbose=0, exit_unconverged=False, detach_unconverged=False,
                          grad_method=GradMethods.AUTO_DIFF, eps=1e-10, linesearch_decay=0.2,
                          max_linesearch_iter=10)(x0, QuadCost(Q, pp), dx)
    return u.detach().transpose(0, 1).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-reference", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x0 = P.initial_states(32, 0)
    cost = P.shooting_cost(x0, P.params(), *P.cost_weights())
    t0 = time.perf_counter()
    U_mpc = solve_mpc(x0)
    t_mpc = time.perf_counter() - t0
    c_mpc = cost(U_mpc)
    for nm in (0, 4):
        opt = TrajOptimizer(method="newton", max_iters=200, backward="none", bounds=(-P.U_MAX, P.U_MAX), tol=1e-10,
                            nonmonotone=nm)
        t0 = time.perf_counter()
        U, info = opt.solve(cost, torch.zeros(32, P.T, 1, dtype=P.DT))
        t = time.perf_counter() - t0
        print(f"newton nonmonotone={nm}: {t:.2f} s (mpc.pytorch {t_mpc:.2f} s); max |U - U_mpc| "
              f"{(U - U_mpc).abs().max():.2e}; max cost - cost_mpc {(info.cost - c_mpc).max():.2e}; "
              f"iterations max {int(info.iterations.max())}; {info.summary()}")
    if args.write_reference:
        P.REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        P.REFERENCE.write_text(json.dumps({
            "source": "mpc.pytorch 0.0.6 MPC(lqr_iter=100, eps=1e-10, AUTO_DIFF), float64; benchmarks/pendulum_vs_mpc.py",
            "x0": x0.tolist(), "U": U_mpc.tolist(), "cost": c_mpc.tolist()}, indent=None))
        print(f"wrote {P.REFERENCE}")


if __name__ == "__main__":
    main()
