"""Predicted return and its gradient w.r.t. the action sequence, without autograd.

The acting solve of DiffTORI evaluates ``G(U) = sum_t gamma^t R(z_t, u_t) + gamma^H min Q(z_H, pi(z_H))``
and ``dG/dU`` about a hundred times per environment step at batch 1, where autograd's per-node
bookkeeping costs more than the arithmetic. :class:`ReturnGradient` runs the same forward pass with
the first layers of dynamics and reward (and of the twin critic) fused into one matrix product each, and a
hand-written backward pass that only propagates into ``U`` (no parameter gradients). Values equal
autograd's to float rounding (tested); it is used for the solver's no-graph iterations only, the
differentiable tail of a policy-gradient solve stays on autograd.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from difftori.models.mlp import elu_grad

__all__ = ["ReturnGradient", "supports", "compiled_return_gradient"]


def _linears(net: nn.Sequential, acts: tuple[type, ...]) -> list[nn.Linear] | None:
    """The Linear layers of ``Linear act Linear act ... Linear`` with the given activations, else None."""
    mods = list(net)
    if len(mods) != 2 * len(acts) + 1:
        return None
    lins = mods[0::2]
    if not all(type(m) is nn.Linear for m in lins) or not all(type(m) is a for m, a in zip(mods[1::2], acts)):
        return None
    return lins


def _q_parts(net: nn.Sequential) -> tuple[nn.Linear, nn.LayerNorm, nn.Linear, nn.Linear] | None:
    """``Linear LayerNorm Tanh Linear ELU Linear`` (TD-MPC's critic), else None."""
    kinds = (nn.Linear, nn.LayerNorm, nn.Tanh, nn.Linear, nn.ELU, nn.Linear)
    mods = list(net)
    if len(mods) != len(kinds) or not all(type(m) is k for m, k in zip(mods, kinds)):
        return None
    return mods[0], mods[1], mods[3], mods[5]


def supports(model: nn.Module) -> bool:
    """Whether ``model`` (a TOLD) has the layer structure this module differentiates by hand."""
    two = (nn.ELU, nn.ELU)
    return (all(_linears(n, two) is not None for n in (model._dynamics, model._reward, model._pi))
            and all(_q_parts(n) is not None for n in (model._Q1, model._Q2)))


class ReturnGradient:
    """``(G, dG/dU)`` of a TOLD's predicted return, from a snapshot of its weights (fp32, no graph).

    Build one per solve (weights change between solves): ``ReturnGradient(model, discount)(z0, U)`` with
    ``z0 (B, latent)`` and ``U (B, H, A)`` returns ``G (B,)`` and ``dG/dU (B, H, A)``.
    """

    @torch.no_grad()
    def __init__(self, model: nn.Module, discount: float):
        if not supports(model):
            raise ValueError("ReturnGradient needs TD-MPC's layer structure (ELU MLPs, LayerNorm-Tanh critics)")
        self.discount = float(discount)
        self.latent = model.latent_dim
        d1, d2, d3 = _linears(model._dynamics, (nn.ELU, nn.ELU))
        r1, r2, r3 = _linears(model._reward, (nn.ELU, nn.ELU))
        self.hidden = d1.out_features
        # x = [z, a] -> [dynamics hidden | reward hidden] in one product (weights stored (in, out))
        self.W1 = torch.cat([d1.weight, r1.weight]).t().float()
        self.b1 = torch.cat([d1.bias, r1.bias]).float()
        self.dyn2, self.rew2 = (d2.weight.float(), d2.bias.float()), (r2.weight.float(), r2.bias.float())
        self.dyn3, self.rew3 = (d3.weight.float(), d3.bias.float()), (r3.weight.float(), r3.bias.float())
        self.pi = [(m.weight.float(), m.bias.float()) for m in _linears(model._pi, (nn.ELU, nn.ELU))]
        q1, q2 = _q_parts(model._Q1), _q_parts(model._Q2)
        self.q_hidden = q1[0].out_features
        self.Wq1 = torch.cat([q1[0].weight, q2[0].weight]).t().float()
        self.bq1 = torch.cat([q1[0].bias, q2[0].bias]).float()
        self.ln = [(q[1].weight.float(), q[1].bias.float(), q[1].eps) for q in (q1, q2)]
        self.q2 = [(q[2].weight.float(), q[2].bias.float()) for q in (q1, q2)]
        self.q3 = [(q[3].weight.float(), q[3].bias.float()) for q in (q1, q2)]

    @torch.no_grad()
    def __call__(self, z0: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, _ = U.shape
        L, M = self.latent, self.hidden
        z, G, disc, tape = z0.float(), torch.zeros(B, dtype=torch.float32, device=U.device), 1.0, []
        for t in range(H):
            p1 = torch.addmm(self.b1, torch.cat([z, U[:, t]], 1), self.W1)
            h1 = F.elu(p1)
            pd2, pr2 = F.linear(h1[:, :M], *self.dyn2), F.linear(h1[:, M:], *self.rew2)
            hd2, hr2 = F.elu(pd2), F.elu(pr2)
            G = G + disc * F.linear(hr2, *self.rew3)[:, 0]
            tape.append((p1, h1, pd2, hd2, pr2, hr2, disc))
            z = F.linear(hd2, *self.dyn3)
            disc *= self.discount
        # terminal value: min(Q1, Q2)(z_H, a_H) with a_H = tanh(pi(z_H))
        (w1, c1), (w2, c2), (w3, c3) = self.pi
        pp1 = F.linear(z, w1, c1)
        ph1 = F.elu(pp1)
        pp2 = F.linear(ph1, w2, c2)
        ph2 = F.elu(pp2)
        a = torch.tanh(F.linear(ph2, w3, c3))
        s = torch.addmm(self.bq1, torch.cat([z, a], 1), self.Wq1)
        heads = []
        for i, (lw, lb, eps) in enumerate(self.ln):
            si = s[:, i * self.q_hidden:(i + 1) * self.q_hidden]
            mu = si.mean(-1, keepdim=True)
            rstd = torch.rsqrt(si.var(-1, unbiased=False, keepdim=True) + eps)
            xhat = (si - mu) * rstd
            y = torch.tanh(xhat * lw + lb)
            p2 = F.linear(y, *self.q2[i])
            h2 = F.elu(p2)
            heads.append((F.linear(h2, *self.q3[i])[:, 0], rstd, xhat, y, p2, h2, lw))
        qa, qb = heads[0][0], heads[1][0]
        G = G + disc * torch.minimum(qa, qb)

        # backward into U; torch.minimum splits the gradient evenly on ties (zero-initialised critics tie)
        tie = qa == qb
        wa = torch.where(tie, 0.5, (qa < qb).float()) * disc
        wb = torch.where(tie, 0.5, (qb < qa).float()) * disc
        gs = []
        for i, (_, rstd, xhat, y, p2, h2, lw) in enumerate(heads):
            gp2 = ((wa, wb)[i][:, None] * self.q3[i][0]) * elu_grad(p2, h2)
            gx = (gp2 @ self.q2[i][0]) * (1.0 - y * y) * lw
            gs.append(rstd * (gx - gx.mean(-1, keepdim=True) - xhat * (gx * xhat).mean(-1, keepdim=True)))
        gxa = torch.cat(gs, 1) @ self.Wq1.t()  # (B, L + A)
        gpp2 = ((gxa[:, L:] * (1.0 - a * a)) @ w3) * elu_grad(pp2, ph2)
        gz = gxa[:, :L] + (((gpp2 @ w2) * elu_grad(pp1, ph1)) @ w1)
        gU = torch.empty(U.shape, dtype=torch.float32, device=U.device)
        (wd3, _), (wr3, _) = self.dyn3, self.rew3
        for t in reversed(range(H)):
            p1, h1, pd2, hd2, pr2, hr2, disc = tape[t]
            gd = ((gz @ wd3) * elu_grad(pd2, hd2)) @ self.dyn2[0]
            gr = ((disc * wr3).expand(B, -1) * elu_grad(pr2, hr2)) @ self.rew2[0]
            gx = (torch.cat([gd, gr], 1) * elu_grad(p1, h1)) @ self.W1.t()
            gz, gU[:, t] = gx[:, :L], gx[:, L:]
        return G, gU.to(U.dtype)


_COMPILED = None


def compiled_return_gradient():
    """``ReturnGradient.__call__`` under ``torch.compile`` (one per process; recompiles per horizon / batch).

    Where compilation fails (e.g. no C++ compiler for inductor's CPU code), it warns once and runs the same
    function eagerly from then on: same values, only slower."""
    global _COMPILED
    if _COMPILED is None:
        # C++ wrapper: the call's own overhead, not the kernels, dominates at batch 1 (same kernels, same values)
        compiled = torch.compile(ReturnGradient.__call__, options={"cpp_wrapper": True})
        state = {"eager": False}

        def call(prog: ReturnGradient, z0: torch.Tensor, U: torch.Tensor):
            if not state["eager"]:
                try:
                    return compiled(prog, z0, U)
                except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back, never lose the run
                    state["eager"] = True
                    warnings.warn(f"difftori.return_grad=compiled: torch.compile failed ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}); running the manual gradient eagerly",
                                  RuntimeWarning, stacklevel=2)
            return ReturnGradient.__call__(prog, z0, U)

        _COMPILED = call
    return _COMPILED
