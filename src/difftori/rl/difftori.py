"""DiffTORI (Wan et al., 2024): TD-MPC whose policy is a differentiable trajectory optimizer.

Additions over :class:`~difftori.rl.tdmpc.TDMPC` (METHOD.md, "DiffTORI additions"):

* A twin critic ``Q_s(obs, a)`` on the raw observation (built by the world model with
  ``obs_critic=True``: an MLP on the state vector; for pixels its OWN conv encoder, not the shared
  one, so the policy-gradient critic is independent of the representation the gradient updates).
  It is trained by the TD-MPC update through ``_extra_losses`` with the original's target
  ``r + discount * min Q_s_target(s', pi(h(s')))`` x ``qs_coef`` (0.1); its target copy is the
  corresponding part of the EMA ``model_target``.
* Acting (from ``pg_start_step`` agent steps on; TD-MPC's planner before): ``U0`` is a rollout of
  pi in the latent model (what the original effectively uses: it builds the shifted previous plan
  but initialises the solver from the pi rollout), then
  ``max_U sum_t gamma^t R(z_t, u_t) + gamma^H min Q(z_H, pi(z_H))`` is solved with
  :class:`~difftori.optim.TrajOptimizer` (cost = -return; ``lm_scalar`` = the original's LM on the
  residual ``1000 - G``; task preset iterations / step / damping). The executed action is
  ``info.best_U[:, 0]`` plus TD-MPC's scheduled exploration noise (training).
  Options beyond the original (``DiffTORIConfig``): ``init`` = ``shift`` / ``planner`` starts the
  acting solve from the better (by predicted return) of the pi rollout and the previous solution
  shifted by one step / TD-MPC's MPPI plan; ``bound_mode`` = ``project`` keeps the iterates in the
  action box (with the original ``clamp_in_cost`` a coordinate that leaves the box sees zero gradient
  and stays out, so its policy gradient is exactly zero and the solve stops early).
* Policy-gradient loss ``-min Q_s(obs, U*[:, 0])`` (``U*`` = the solver's last iterate, as the
  original) with pi and Q_s frozen; the gradient flows through the solver (``backward``:
  truncated(5) by default) into the encoder, dynamics, reward and latent Q. ``pg_mode=episode``
  (original): the acting solve of every training step is also the PG solve; its gradient is
  accumulated in buffers of our own and one Adam step (lr 1e-3, clip 100) is taken at episode end.
  ``pg_mode=replay``: each ``update`` adds one batched PG step on ``pg_batch`` replayed observations.
  Non-finite losses / gradients are skipped and counted, never applied.

Defaults vs the original (faithful = ``init="pi", bound_mode="clamp_in_cost"``, variant
``difftori-faithful`` of ``benchmarks/rl_compare.py``): ``init="planner", bound_mode="project"``:
the solve starts from the better of the pi rollout and TD-MPC's MPPI plan (so the executed
``best_U`` is at least as good as the plan in predicted return), and projection lets a coordinate
come back from the bound and keeps the PG gradient on free coordinates. ``act="planner"`` executes
MPPI's action and keeps the solver only for the policy-gradient solve (started from the MPPI plan).
Measurements behind these choices: ``benchmarks/results/rl_diagnosis.md``.

``z_0 = h(obs)`` is part of the cost's computational graph. It is evaluated once per solve (it does
not depend on ``U``) and closed over by the cost, which gives the same derivatives in every backward
mode as re-encoding inside each cost call while running the encoder once instead of per iteration.

With ``precision="bf16"`` the TD-MPC parts (update, Q_s loss, MPPI) run under bf16 autocast, while
every difftori.optim solve (acting and policy-gradient) runs under ``autocast(False)`` in fp32: those
are batch-1 solves, where bf16 is slower, and their step sizes and plateau tolerance (1e-4 relative)
are below bf16's resolution (~4e-3).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from difftori.envs.spec import EnvSpec
from difftori.optim import RESIDUAL_METHODS, SolverInfo, Status, TrajOptimizer
from difftori.rl.buffer import Batch, ReplayBuffer
from difftori.rl.config import RLConfig
from difftori.rl.fast_return import ReturnGradient, compiled_return_gradient
from difftori.rl.tdmpc import TDMPC

__all__ = ["DiffTORI"]


class DiffTORI(TDMPC):
    """DiffTORI agent: TD-MPC world model + trajectory-optimization policy trained by policy gradient."""

    obs_critic = True

    def __init__(self, cfg: RLConfig, spec: EnvSpec):
        super().__init__(cfg, spec)
        d = cfg.difftori
        self.dcfg = d
        self.solver = TrajOptimizer(
            method=d.solver_method, max_iters=self.res.solver_max_iters, step_size=self.res.solver_step_size,
            damping=self.res.solver_damping, backward=d.backward, backward_iters=d.backward_iters, bounds=(-1.0, 1.0),
            bound_mode=d.bound_mode, plateau_window=d.plateau_window, plateau_rtol=d.plateau_rtol,
        )
        self._prev_U: torch.Tensor | None = None  # last acting solution (1, H, A), for init="shift"
        self._pg_params = self.pg_parameters()
        self.pg_optim = torch.optim.Adam(self._pg_params, lr=d.pg_lr)
        self._pg_grads: list[torch.Tensor] | None = None  # episode-mode accumulation (not .grad)
        self._pg_count = 0  # PG terms accumulated in the current episode
        self.pg_steps = 0  # PG optimizer steps taken
        self.pg_skipped = 0  # PG terms / steps dropped because they were non-finite
        self._rg: tuple[tuple[int, ...], ReturnGradient] | None = None  # weight snapshot, keyed on param versions

    # -- parameters -----------------------------------------------------------------------------
    def pg_parameters(self) -> list[nn.Parameter]:
        """What the policy gradient updates: encoder, dynamics, reward and latent Q (not pi, not Q_s)."""
        qs_ids = {id(p) for m in self.model.obs_critic_modules() for p in m.parameters()}
        return [p for p in self.model.model_parameters() if id(p) not in qs_ids]

    @contextlib.contextmanager
    def _frozen_pi_qs(self) -> Iterator[None]:
        """pi and Q_s take no gradient from the PG loss (original: requires_grad=False while it is built)."""
        params = self.model.pi_parameters() + [p for m in self.model.obs_critic_modules() for p in m.parameters()]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)

    # -- trajectory optimization ---------------------------------------------------------------
    def predicted_return(self, z0: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """``sum_t gamma^t R(z_t, u_t) + gamma^H min Q(z_H, pi(z_H))`` for ``U (B, H, A)``, shape ``(B,)``."""
        z, g, discount = z0, 0.0, 1.0
        for t in range(U.shape[1]):
            a = U[:, t]
            g = g + discount * self.model.reward(z, a)
            z = self.model.next(z, a)
            discount *= self.cfg.discount
        g = g + discount * torch.min(*self.model.Q(z, self.model.pi(z)))
        return g.squeeze(-1)

    @torch.no_grad()
    def initial_plan(self, z0: torch.Tensor, horizon: int, eval_mode: bool) -> torch.Tensor:
        """``U0 (B, H, A)``: pi rolled out in the latent model (min_std noise when training, as the original)."""
        std = 0.0 if eval_mode else self.cfg.min_std
        z, actions = z0, []
        for _ in range(horizon):
            a = self.model.pi(z, std)
            actions.append(a)
            z = self.model.next(z, a)
        return torch.stack(actions, dim=1)

    @torch.no_grad()
    def acting_plan(self, obs: torch.Tensor, z0: torch.Tensor, t0: bool, eval_mode: bool, step: int) -> torch.Tensor:
        """``U0 (1, H, A)`` of an acting solve per ``init``: the pi rollout, or the better (by predicted
        return) of it and the previous solution shifted by one step (``shift``) / TD-MPC's MPPI plan
        (``planner``)."""
        horizon = self.plan_horizon(step)
        U_pi = self.initial_plan(z0, horizon, eval_mode)
        cand = None
        if self.dcfg.init == "shift" and not t0 and self._prev_U is not None:
            k = min(self._prev_U.shape[1] - 1, horizon)
            cand = U_pi.clone()
            cand[:, :k] = self._prev_U[:, 1 : k + 1]
        elif self.dcfg.init == "planner":
            super().plan(obs, t0=t0, eval_mode=True, step=step)  # sets self._prev_mean (H, A)
            cand = self._prev_mean.unsqueeze(0).clamp(-1.0, 1.0)
        if cand is None:
            return U_pi
        both = torch.cat([U_pi, cand])
        g = self.predicted_return(z0.expand(2, -1), both)
        return both[int(torch.argmax(g))].unsqueeze(0)

    def solve(self, obs: torch.Tensor, step: int, eval_mode: bool, backward: str,
              U0: torch.Tensor | None = None) -> tuple[torch.Tensor, SolverInfo]:
        """Solve for a batch of observations from ``U0`` (default: pi rollout); ``U*`` is differentiable unless ``backward == "none"``.

        Always fp32 (autocast off), whatever the precision or an enclosing autocast region."""
        with self.autocast(False):
            with torch.set_grad_enabled(backward != "none"):
                z0 = self.model.encode(obs)
            if U0 is None:
                U0 = self.initial_plan(z0.detach(), self.plan_horizon(step), eval_mode)

            def cost(U: torch.Tensor) -> torch.Tensor:
                return -self.predicted_return(z0, U)

            if self.solver.method in RESIDUAL_METHODS:
                offset = self.solver.offset

                def residual(U: torch.Tensor) -> torch.Tensor:  # original: r = 1000 - G
                    return (offset + cost(U)).unsqueeze(-1)

                return self.solver.solve(None, U0, residual_fn=residual, backward=backward)
            return self.solver.solve(cost, U0, backward=backward, cost_grad_fn=self._cost_grad_fn(z0))

    def _cost_grad_fn(self, z0: torch.Tensor) -> Callable | None:
        """``U -> (-G, -dG/dU)`` without autograd (``return_grad`` manual / compiled), or None (autograd)."""
        if self.dcfg.return_grad == "autograd":  # the config allows the others with first-order methods only
            return None
        prog = self._return_gradient()
        fn = compiled_return_gradient() if self.dcfg.return_grad == "compiled" else ReturnGradient.__call__
        z = z0.detach()

        def cost_grad(U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            G, g = fn(prog, z, U)
            return -G, -g

        return cost_grad

    def _return_gradient(self) -> ReturnGradient:
        """The model's weight snapshot for the hand-written return gradient; rebuilt only when a parameter changed
        (every in-place update bumps its version counter), so evaluation episodes reuse one."""
        key = tuple(p._version for p in self.model.parameters())
        if self._rg is None or self._rg[0] != key:
            self._rg = (key, ReturnGradient(self.model, self.cfg.discount))
        return self._rg[1]

    def pg_loss(self, obs: torch.Tensor, step: int, eval_mode: bool = False,
                U0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, SolverInfo]:
        """``(loss, U*, info)``: ``mean_b -min Q_s(obs_b, U*_b[0])`` with graph into encoder/dynamics/reward/Q.

        pi and Q_s are frozen while the graph is built, so they get no gradient from this loss. fp32, as :meth:`solve`.
        """
        with self._frozen_pi_qs(), self.autocast(False):
            U, info = self.solve(obs, step, eval_mode, self.dcfg.backward, U0)
            loss = -torch.min(*self.model.Qs(obs, U[:, 0])).mean()
        return loss, U, info

    @staticmethod
    def _saturated(U: torch.Tensor) -> torch.Tensor:
        """Fraction of first-action coordinates at the box (their PG gradient is exactly zero)."""
        return (U[:, 0].detach().abs() >= 1.0).float().mean()

    # -- acting ---------------------------------------------------------------------------------
    def plan(self, obs: torch.Tensor, t0: bool, eval_mode: bool, step: int) -> torch.Tensor:
        """TD-MPC's planner before ``pg_start_step``; then the trajectory optimizer's best first action."""
        if step < self.dcfg.pg_start_step or (self.dcfg.act == "planner" and (eval_mode or self.dcfg.pg_mode != "episode")):
            return super().plan(obs, t0=t0, eval_mode=eval_mode, step=step)
        if self.dcfg.act == "planner":  # execute MPPI's action; the PG solve starts from its plan
            a = super().plan(obs, t0=t0, eval_mode=eval_mode, step=step)
            loss, U, info = self.pg_loss(obs, step, eval_mode, self._prev_mean.unsqueeze(0).clamp(-1.0, 1.0))
            self._push("pg_saturated", self._saturated(U))
            self._accumulate(loss)
            self._record("solver", info)
            return a
        U0 = None
        if self.dcfg.init != "pi":
            with torch.no_grad(), self.autocast(False):  # batch-1 parts in fp32 (the MPPI plan inside sets its own)
                U0 = self.acting_plan(obs, self.model.encode(obs), t0, eval_mode, step)
        if not eval_mode and self.dcfg.pg_mode == "episode":
            loss, U, info = self.pg_loss(obs, step, eval_mode, U0)
            self._push("pg_saturated", self._saturated(U))
            self._accumulate(loss)
        else:
            with torch.no_grad():
                U, info = self.solve(obs, step, eval_mode, "none", U0)
        if not eval_mode:
            self._record("solver", info)
            self._push("act_saturated", self._saturated(U))
        self._prev_U = info.best_U.detach()
        a = info.best_U[0, 0]
        if not eval_mode:
            std = self._explore_std(step)
            a = a + std * torch.randn_like(a)
            self._push("explore_std", torch.as_tensor(std).float().mean())
        return a.detach()

    def _explore_std(self, step: int) -> torch.Tensor | float:
        """Std of the training noise on the executed solver action (``difftori.explore``)."""
        if self.dcfg.explore == "planner" and self._prev_std is not None:
            return self._prev_std[0]
        return self.std(step)

    def reset(self) -> None:
        """Forget the warm-start plans (a new episode begins)."""
        super().reset()
        self._prev_U = None

    # -- policy gradient ------------------------------------------------------------------------
    def _grads(self, loss: torch.Tensor) -> list[torch.Tensor] | None:
        """Gradient of ``loss`` w.r.t. :meth:`pg_parameters` (zeros where unused); None if non-finite."""
        if not torch.isfinite(loss) or not loss.requires_grad:
            return None
        grads = torch.autograd.grad(loss, self._pg_params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self._pg_params, grads)]
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        return grads if bool(finite) else None

    def _accumulate(self, loss: torch.Tensor) -> None:
        """Episode mode: add this step's PG gradient to the episode's buffers (skip if non-finite)."""
        grads = self._grads(loss)
        self._push("pg_loss", loss.detach())
        if grads is None:
            self.pg_skipped += 1
            self._push("pg_skipped", torch.ones(()))
            return
        if self._pg_grads is None:
            self._pg_grads = [g.detach().clone() for g in grads]
        else:
            for acc, g in zip(self._pg_grads, grads):
                acc.add_(g)
        self._pg_count += 1

    def _apply(self, grads: list[torch.Tensor]) -> tuple[torch.Tensor, bool]:
        """One PG Adam step with ``grads`` (clipped to ``pg_grad_clip``); .grad of the params is restored."""
        stash = [p.grad for p in self._pg_params]
        try:
            for p, g in zip(self._pg_params, grads):
                p.grad = g
            norm = nn.utils.clip_grad_norm_(self._pg_params, self.dcfg.pg_grad_clip)
            ok = bool(torch.isfinite(norm))
            if ok:
                self.pg_optim.step()
                self.pg_steps += 1
            else:
                self.pg_skipped += 1
        finally:
            for p, g in zip(self._pg_params, stash):
                p.grad = g
        return norm.detach(), ok

    def on_episode_end(self, step: int) -> dict[str, torch.Tensor]:
        """Episode mode: one Adam step on the accumulated PG gradient; returns the episode's solver/PG metrics."""
        metrics: dict[str, torch.Tensor] = {}
        if self._pg_grads is not None and self._pg_count > 0:
            norm, ok = self._apply(self._pg_grads)
            metrics["pg_grad_norm"] = norm
            metrics["pg_stepped"] = torch.tensor(float(ok))
        self._pg_grads, self._pg_count = None, 0
        metrics.update(self._flush())
        if metrics:
            metrics["pg_skipped_total"] = torch.tensor(float(self.pg_skipped))
        return metrics

    def update(self, buffer: ReplayBuffer, step: int) -> dict[str, torch.Tensor]:
        """TD-MPC update (+ Q_s TD loss); in replay mode also one batched PG step."""
        metrics = super().update(buffer, step)
        if self.dcfg.pg_mode == "replay" and step >= self.dcfg.pg_start_step:
            metrics.update(self.replay_pg_step(buffer, step))
        return metrics

    def replay_pg_step(self, buffer: ReplayBuffer, step: int) -> dict[str, torch.Tensor]:
        """One PG step on ``pg_batch`` observations sampled from ``buffer`` (batched solve, mean loss)."""
        obs = buffer.sample(self.dcfg.pg_batch, self.device).obs
        loss, U, info = self.pg_loss(obs, step, eval_mode=True)
        grads = self._grads(loss)
        out = {"pg_loss": loss.detach(), "pg_saturated": self._saturated(U)}
        if grads is None:
            self.pg_skipped += 1
            out["pg_stepped"] = torch.tensor(0.0)
        else:
            out["pg_grad_norm"], ok = self._apply(grads)
            out["pg_stepped"] = torch.tensor(float(ok))
        out.update(self._info_metrics("pg_solver", info))
        out["pg_skipped_total"] = torch.tensor(float(self.pg_skipped))
        return out

    # -- Q_s --------------------------------------------------------------------------------------
    def _extra_losses(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """TD loss of the raw-observation critic (x ``qs_coef``), target ``r + discount * min Q_s_target(s', pi(h(s')))``."""
        c = self.cfg
        h, b = batch.next_obs.shape[:2]
        with torch.no_grad():  # all steps at once: Q_s needs no latent rollout
            next_obs = self.aug(batch.next_obs.flatten(0, 1))
            with self.autocast():
                a = self.model.pi(self.model.encode(next_obs), c.min_std)
                q_next = torch.min(*self.model_target.Qs(next_obs, a)).float()
            target = batch.reward.flatten(0, 1) + c.discount * q_next
            # Input of step t is the (augmented) observation the target of step t-1 used (as the original).
            obs = torch.cat([self.aug(batch.obs), next_obs[: (h - 1) * b]])
        with self.autocast():
            q1, q2 = self.model.Qs(obs, batch.action.flatten(0, 1))
        q1, q2 = q1.float(), q2.float()
        err = ((q1 - target) ** 2 + (q2 - target) ** 2).view(h, b, 1)
        rho = c.rho ** torch.arange(h, device=err.device, dtype=err.dtype)
        return {"value_s_loss": self.dcfg.qs_coef * (rho.view(h, 1, 1) * err).sum(0)}

    # -- metrics ----------------------------------------------------------------------------------
    def _record(self, prefix: str, info: SolverInfo) -> None:
        for k, v in self._info_metrics(prefix, info).items():
            self._push(k, v)

    @staticmethod
    def _info_metrics(prefix: str, info: SolverInfo) -> dict[str, torch.Tensor]:
        """Mean iterations, converged fraction and per-status fractions of one solve (detached)."""
        counts = torch.bincount(info.status.reshape(-1).cpu(), minlength=len(Status)).float() / info.status.numel()
        out = {
            f"{prefix}_iters": info.iterations.float().mean().detach(),
            f"{prefix}_converged": info.converged.float().mean().detach(),
            f"{prefix}_best_cost": info.best_cost.float().mean().detach(),
        }
        out.update({f"{prefix}_{s.name.lower()}": counts[s.value] for s in Status})
        if info.fallback_steps is not None:  # FALLBACK is an event counter now: fraction of samples that met one
            out[f"{prefix}_fallback"] = (info.fallback_steps > 0).float().mean().detach()
        return out

    # -- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["difftori"] = {
            "pg_optim": self.pg_optim.state_dict(),
            "pg_grads": None if self._pg_grads is None else [g.detach().cpu() for g in self._pg_grads],
            "pg_count": self._pg_count,
            "pg_steps": self.pg_steps,
            "pg_skipped": self.pg_skipped,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "difftori" not in state:
            raise KeyError("checkpoint has no 'difftori' section (was it saved by a TD-MPC agent?)")
        d = state["difftori"]
        self.pg_optim.load_state_dict(d["pg_optim"])
        grads = d["pg_grads"]
        self._pg_grads = None if grads is None else [g.to(self.device) for g in grads]
        self._pg_count = int(d["pg_count"])
        self.pg_steps = int(d["pg_steps"])
        self.pg_skipped = int(d["pg_skipped"])
        self._prev_U = None
