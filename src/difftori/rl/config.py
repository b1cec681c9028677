"""Typed configuration of an RL run (TD-MPC and DiffTORI agents on DeepMind Control).

Defaults are the published TD-MPC / DiffTORI settings (METHOD.md). Units: ``steps``,
``eval_freq`` and ``checkpoint_freq`` count ENV steps (what learning curves report); the
TD-MPC schedules (``seed_steps``, ``schedule_steps``) and ``difftori.pg_start_step`` count AGENT
steps (env steps / action repeat), as in the original code. Values that depend on the task or
the observation type stay ``None`` here and are filled in by :func:`resolve`, which returns a
separate :class:`Resolved` view (the config itself is never modified with env-derived values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, get_args

from difftori.envs.spec import EnvSpec
from difftori.utils.config import check

__all__ = ["RLConfig", "DiffTORIConfig", "Resolved", "resolve", "preset_overrides", "PRESETS", "SMALL_SIZES", "SMALL_FRACTIONS", "preset_values", "ACT_MODES", "RETURN_GRADS"]

PRESETS = ("paper", "small")
"""Named presets: paper (the published sizes and schedules, GPU scale) and small (CPU sizes, schedules scaled to the budget)."""
ACT_MODES = ("agent", "planner", "pi", "solver")
"""How a loaded checkpoint acts in evaluation: agent (as it was trained to act), planner (TD-MPC's MPPI on its
model), pi (the policy network's mean action), solver (DiffTORI's trajectory optimizer on its model, also for a
TD-MPC checkpoint). The same world model under different action selection separates what the model learned from
how actions are chosen."""
ReturnGrad = Literal["autograd", "manual", "compiled"]
RETURN_GRADS: tuple[str, ...] = get_args(ReturnGrad)
"""How DiffTORI's no-graph solver iterations get the return gradient (``difftori.return_grad``)."""

SMALL_SIZES: dict = dict(mlp_dim=64, enc_dim=64, latent_dim=32, batch_size=64, num_samples=64, num_elites=8, iterations=3)
"""Network / planner sizes of the ``small`` preset (also the demo's)."""

SMALL_FRACTIONS: dict = dict(seed_steps=0.1, pg_start_step=0.15, schedule_steps=0.5)
"""``small`` preset schedules as fractions of the run's AGENT steps (paper: 5000 / 6000 / 25000 agent steps)."""


def preset_values(preset: str, task: str, steps: int, action_repeat: int | None = None) -> dict:
    """Config values of a named preset for a run of ``steps`` env steps on ``task`` (flat keys, ``difftori.x`` nested).

    ``paper`` sets nothing (the dataclass defaults are the published settings). ``small`` sets
    :data:`SMALL_SIZES` and scales the seed phase, the DiffTORI start and the horizon/exploration
    schedule to the budget (:data:`SMALL_FRACTIONS`), so a run of a few 10k env steps fits a CPU.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    if preset == "paper":
        return {}
    from difftori.envs import dmc

    ar = action_repeat or (dmc.action_repeat_for(task) if dmc.canonical(task) else 2)
    agent_steps = max(steps // ar, 1)
    out = dict(SMALL_SIZES)
    out["seed_steps"] = int(SMALL_FRACTIONS["seed_steps"] * agent_steps)
    out["difftori.pg_start_step"] = int(SMALL_FRACTIONS["pg_start_step"] * agent_steps)
    out["schedule_steps"] = max(int(SMALL_FRACTIONS["schedule_steps"] * agent_steps), 1)
    return out


def preset_overrides(preset: str, task: str, steps: int, action_repeat: int | None = None) -> dict:
    """:func:`preset_values` as a nested partial config (with ``preset`` recorded), for ``dataclass_from_args(preset=)``."""
    nested: dict = {"preset": preset}
    for k, v in preset_values(preset, task, steps, action_repeat).items():
        head, _, tail = k.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = v
        else:
            nested[k] = v
    return nested


@dataclass
class DiffTORIConfig:
    """DiffTORI-specific settings (consumed by ``difftori.rl.difftori.DiffTORI``)."""

    solver_method: str = "lm_scalar"
    """Trajectory optimizer method (``lm_scalar`` = the original LM on one residual; or gd, adam, newton, gauss_newton, lm)."""
    max_iters: Optional[int] = None
    """Solver iterations; None -> the task's preset (``difftori.envs.dmc.SOLVER_PRESETS``)."""
    step_size: Optional[float] = None
    """Solver step size; None -> the task's preset."""
    damping: Optional[float] = None
    """Solver (LM) damping; None -> the task's preset."""
    bound_mode: Literal["auto", "project", "clamp_in_cost"] = "project"
    """Action box handling: clamp_in_cost (original: cost sees clamp(U), a coordinate that leaves the box stays out with zero gradient); project (iterates projected into the box); auto: the solver's default (clamp_in_cost for lm_scalar, project otherwise)."""
    init: Literal["pi", "shift", "planner"] = "planner"
    """Acting solve's initial plan: pi (rollout of pi in the latent model, original); shift (the better, by predicted return, of the pi rollout and the previous solution shifted by one step); planner (the better of the pi rollout and TD-MPC's MPPI plan)."""
    backward: Literal["truncated", "unroll", "implicit", "none"] = "truncated"
    """How gradients flow through the solver (original: truncated, last 5 iterations)."""
    backward_iters: int = 5
    """Differentiable iterations for ``backward=truncated``."""
    pg_mode: Literal["episode", "replay"] = "episode"
    """episode: accumulate the policy-gradient loss over each collected episode and step at its end (original); replay: step on replay batches."""
    pg_start_step: int = 6000
    """Agent steps before acting with the optimizer and applying the policy-gradient loss (before: TD-MPC planner)."""
    pg_lr: float = 1e-3
    """Adam learning rate of the policy-gradient step."""
    pg_grad_clip: float = 100.0
    """Gradient-norm clip of the policy-gradient step."""
    pg_batch: int = 32
    """Observations per policy-gradient step in ``pg_mode=replay``."""
    qs_coef: float = 0.1
    """Weight of the raw-observation critic Q_s TD loss."""
    act: Literal["solver", "planner"] = "solver"
    """What is executed once DiffTORI acts: solver (the trajectory optimizer's best first action, original) or planner (TD-MPC's MPPI action; the solver then only provides the policy-gradient solve, started from the MPPI plan)."""
    explore: Literal["schedule", "planner"] = "schedule"
    """Exploration noise on the executed solver action while training: schedule (Gaussian with the std schedule, std_init decayed to min_std; the original adds none); planner (per action dimension, the std of TD-MPC's MPPI elites for the first action, i.e. TD-MPC's own exploration; needs init=planner)."""
    plateau_window: int = 5
    """Acting-solve stop rule: every this many iterations a solve whose best predicted return improved by less than plateau_rtol (relative) stops; 0 = off (the original: a fixed number of iterations)."""
    plateau_rtol: float = 1e-4
    """Relative improvement per plateau_window below which an acting solve stops."""
    return_grad: ReturnGrad = "autograd"
    """Gradient of the predicted return in the solver's no-graph iterations: autograd; manual (fused layers and a hand-written backward into U, the same values to float rounding, faster at batch 1); compiled (manual under torch.compile: fastest, compiles ~30 s per horizon and batch size once per process). The differentiable tail always uses autograd."""

    def __post_init__(self) -> None:
        check(self.max_iters is None or self.max_iters >= 1, f"difftori.max_iters must be >= 1, got {self.max_iters}")
        check(self.step_size is None or self.step_size > 0, f"difftori.step_size must be > 0, got {self.step_size}")
        check(self.damping is None or self.damping >= 0, f"difftori.damping must be >= 0, got {self.damping}")
        check(self.bound_mode in ("auto", "project", "clamp_in_cost"), f"difftori.bound_mode must be auto, project or clamp_in_cost, got {self.bound_mode!r}")
        check(self.init in ("pi", "shift", "planner"), f"difftori.init must be pi, shift or planner, got {self.init!r}")
        check(self.backward_iters >= 1, f"difftori.backward_iters must be >= 1, got {self.backward_iters}")
        check(self.pg_start_step >= 0, f"difftori.pg_start_step must be >= 0, got {self.pg_start_step}")
        check(self.pg_lr > 0 and self.pg_grad_clip > 0, "difftori.pg_lr and difftori.pg_grad_clip must be > 0")
        check(self.pg_batch >= 1, f"difftori.pg_batch must be >= 1, got {self.pg_batch}")
        check(self.qs_coef >= 0, f"difftori.qs_coef must be >= 0, got {self.qs_coef}")
        check(self.act in ("solver", "planner"), f"difftori.act must be solver or planner, got {self.act!r}")
        check(self.explore in ("schedule", "planner"), f"difftori.explore must be schedule or planner, got {self.explore!r}")
        check(self.explore != "planner" or self.init == "planner",
              f"difftori.explore=planner takes the noise from the MPPI plan: it needs difftori.init=planner, got {self.init!r}")
        check(self.plateau_window >= 0, f"difftori.plateau_window must be >= 0, got {self.plateau_window}")
        check(self.plateau_rtol >= 0, f"difftori.plateau_rtol must be >= 0, got {self.plateau_rtol}")
        check(self.return_grad in ("autograd", "manual", "compiled"), f"difftori.return_grad must be autograd, manual or compiled, got {self.return_grad!r}")
        from difftori.optim import FIRST_ORDER_METHODS

        check(self.return_grad == "autograd" or self.solver_method in FIRST_ORDER_METHODS,
              f"difftori.return_grad={self.return_grad} needs a first-order solver_method ({', '.join(FIRST_ORDER_METHODS)}), got {self.solver_method!r}")


@dataclass
class RLConfig:
    """Every hyperparameter of an RL run."""

    # --- run -------------------------------------------------------------------------------
    preset: Literal["paper", "small"] = "paper"
    """Named preset the run started from (values given explicitly override it): paper (published sizes and schedules) or small (CPU sizes: MLP 64, latent 32, batch 64, 64 planner samples; seed phase / DiffTORI start / schedule at 10% / 15% / 50% of the budget's agent steps)."""
    task: str = "cartpole-swingup"
    """DMC task, e.g. cartpole-swingup, walker-walk, cup-catch (see ``difftori.envs.dmc.TASKS``)."""
    agent: Literal["tdmpc", "difftori"] = "difftori"
    """Agent: tdmpc (the MPPI-planning baseline) or difftori (differentiable trajectory optimization)."""
    obs_type: Literal["state", "pixels"] = "state"
    """Observation: state vector or 84x84 RGB pixels (3 stacked frames)."""
    steps: int = 100_000
    """Training budget in ENV steps (paper: 1M from pixels)."""
    seed: int = 1
    """Random seed (networks, env, replay sampling)."""
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu, cuda, cuda:N."""
    num_threads: Optional[int] = None
    """torch CPU threads; None leaves torch's default."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute precision of the batched network passes (world-model update, pi update, MPPI rollouts): fp32, or bf16 (torch.autocast; parameters, losses, optimizer steps and every difftori.optim solve stay fp32)."""
    action_repeat: Optional[int] = None
    """Env steps per agent step; None -> task preset (cartpole 8; hopper, quadruped, reacher 4; else 2)."""
    episode_length: int = 1000
    """Episode length in ENV steps."""
    frame_stack: int = 3
    """Stacked frames for pixel observations."""
    img_size: int = 84
    """Pixel observation size (square)."""
    eval_freq: int = 20_000
    """Evaluate every this many ENV steps (at the next episode boundary); also at the end."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    checkpoint_freq: int = 20_000
    """Checkpoint every this many ENV steps (at episode boundaries); also at the end."""
    run_root: Path = Path("runs")
    """Root of run directories (ROOT/task/agent/seed<s>/<time>)."""
    label: Optional[str] = None
    """Optional variant name shown in plots (agent-label)."""
    video: bool = False
    """Save a video of the first episode of each evaluation (mp4 if an ffmpeg backend exists, else gif)."""
    progress: bool = True
    """Show progress (a bar on a terminal, a line every few seconds in a log)."""

    # --- TD-MPC learning ---------------------------------------------------------------------
    batch_size: Optional[int] = None
    """Replay batch size; None -> 512 (state) / 256 (pixels)."""
    lr: Optional[float] = None
    """Adam learning rate of the world model and pi; None -> 1e-3 (state) / 3e-4 (pixels)."""
    horizon: int = 5
    """Training horizon of the latent rollout and the maximum planning horizon."""
    rho: float = 0.5
    """Temporal weight rho^t of the multi-step losses."""
    consistency_coef: float = 2.0
    """Weight of the latent-consistency loss."""
    reward_coef: float = 0.5
    """Weight of the reward loss."""
    value_coef: float = 0.1
    """Weight of the TD value loss."""
    discount: float = 0.99
    """Discount factor."""
    grad_clip: float = 10.0
    """Gradient-norm clip of the world-model and pi updates."""
    tau: float = 0.01
    """Target-network EMA rate."""
    target_update_freq: int = 2
    """Update the target network every this many updates."""
    per_alpha: float = 0.6
    """Prioritized replay exponent alpha."""
    per_beta: float = 0.4
    """Prioritized replay importance-weight exponent beta."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions (oldest dropped when full)."""
    seed_steps: int = 5000
    """AGENT steps of uniformly random actions before planning and updates start."""
    updates_per_step: float = 1.0
    """Gradient updates per collected agent step (done at episode ends, as TD-MPC)."""
    schedule_steps: int = 25_000
    """AGENT steps over which the planning horizon ramps 1->horizon and exploration std std_init->min_std."""
    std_init: float = 0.5
    """Initial exploration / minimum-planner std (linearly decayed to min_std)."""
    min_std: float = 0.05
    """Final exploration std; also the std of pi's samples."""
    max_std: float = 2.0
    """Initial (and maximum) planner std."""
    image_pad: int = 4
    """Random-shift augmentation padding for pixels (0 disables)."""

    # --- TD-MPC planner ----------------------------------------------------------------------
    iterations: int = 6
    """Planner (MPPI/CEM) iterations per action."""
    num_samples: int = 512
    """Random action sequences per planner iteration."""
    num_elites: int = 64
    """Elite sequences refitting the sampling distribution."""
    mixture_coef: float = 0.05
    """Fraction of extra sequences sampled from pi (5% -> 25 of 512)."""
    temperature: float = 0.5
    """MPPI temperature (score = exp(temperature * (value - max)))."""
    momentum: float = 0.1
    """Momentum of the planner mean update."""

    # --- architecture ------------------------------------------------------------------------
    latent_dim: int = 50
    """Latent state size."""
    mlp_dim: int = 512
    """Hidden width of dynamics, reward, pi and Q."""
    enc_dim: int = 256
    """Hidden width of the state encoder."""
    num_channels: int = 32
    """Channels of each of the 4 conv layers of the pixel encoder."""

    difftori: DiffTORIConfig = field(default_factory=DiffTORIConfig)
    """DiffTORI agent settings."""

    def __post_init__(self) -> None:
        if isinstance(self.run_root, str):
            self.run_root = Path(self.run_root)
        if isinstance(self.difftori, dict):
            self.difftori = DiffTORIConfig(**self.difftori)
        check(self.preset in PRESETS, f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        check(bool(self.task), "task must be a non-empty DMC task name")
        check(self.agent in ("tdmpc", "difftori"), f"agent must be 'tdmpc' or 'difftori', got {self.agent!r}")
        check(self.obs_type in ("state", "pixels"), f"obs_type must be 'state' or 'pixels', got {self.obs_type!r}")
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.num_threads is None or self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}")
        check(self.precision in ("fp32", "bf16"), f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        check(self.action_repeat is None or self.action_repeat >= 1, f"action_repeat must be >= 1, got {self.action_repeat}")
        check(self.episode_length >= 1, f"episode_length must be >= 1, got {self.episode_length}")
        check(self.frame_stack >= 1 and self.img_size >= 16, "frame_stack must be >= 1 and img_size >= 16")
        check(self.eval_freq >= 1 and self.checkpoint_freq >= 1, "eval_freq and checkpoint_freq must be >= 1")
        check(self.eval_episodes >= 0, f"eval_episodes must be >= 0, got {self.eval_episodes}")
        check(self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.horizon >= 1, f"horizon must be >= 1, got {self.horizon}")
        check(0 < self.rho <= 1, f"rho must be in (0, 1], got {self.rho}")
        check(min(self.consistency_coef, self.reward_coef, self.value_coef) >= 0, "loss coefficients must be >= 0")
        check(0 < self.discount <= 1, f"discount must be in (0, 1], got {self.discount}")
        check(self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip}")
        check(0 < self.tau <= 1, f"tau must be in (0, 1], got {self.tau}")
        check(self.target_update_freq >= 1, "target_update_freq must be >= 1")
        check(self.per_alpha >= 0 and self.per_beta >= 0, "per_alpha and per_beta must be >= 0")
        check(self.buffer_size >= 1, "buffer_size must be >= 1")
        check(self.seed_steps >= 0, f"seed_steps must be >= 0, got {self.seed_steps}")
        check(self.updates_per_step >= 0, "updates_per_step must be >= 0")
        check(self.schedule_steps >= 1, "schedule_steps must be >= 1")
        check(0 < self.min_std <= self.max_std, "need 0 < min_std <= max_std")
        check(self.std_init >= self.min_std, "std_init must be >= min_std")
        check(self.image_pad >= 0, "image_pad must be >= 0")
        check(self.iterations >= 1, "iterations must be >= 1")
        check(self.num_samples >= 1, "num_samples must be >= 1")
        check(1 <= self.num_elites <= self.num_samples + int(self.mixture_coef * self.num_samples),
              f"num_elites must be in [1, num_samples + pi samples], got {self.num_elites}")
        check(0 <= self.mixture_coef <= 1, "mixture_coef must be in [0, 1]")
        check(self.temperature > 0, "temperature must be > 0")
        check(0 <= self.momentum < 1, "momentum must be in [0, 1)")
        check(min(self.latent_dim, self.mlp_dim, self.enc_dim, self.num_channels) >= 1, "network sizes must be >= 1")


@dataclass(frozen=True)
class Resolved:
    """Effective values of the config + task preset + env spec (never written back to the config)."""

    action_repeat: int
    episode_length: int
    """Agent steps per episode."""
    batch_size: int
    lr: float
    solver_max_iters: int
    solver_step_size: float
    solver_damping: float


def resolve(cfg: RLConfig, spec: EnvSpec) -> Resolved:
    """Merge ``cfg`` with the task's presets and the env spec."""
    from difftori.envs import dmc

    pixels = cfg.obs_type == "pixels"
    preset = dmc.solver_preset(spec.task) if dmc.canonical(spec.task) else dict(dmc.DEFAULT_SOLVER_PRESET)
    d = cfg.difftori
    return Resolved(
        action_repeat=spec.action_repeat,
        episode_length=spec.episode_length,
        batch_size=cfg.batch_size if cfg.batch_size is not None else (256 if pixels else 512),
        lr=cfg.lr if cfg.lr is not None else (3e-4 if pixels else 1e-3),
        solver_max_iters=int(d.max_iters if d.max_iters is not None else preset["max_iters"]),
        solver_step_size=float(d.step_size if d.step_size is not None else preset["step_size"]),
        solver_damping=float(d.damping if d.damping is not None else preset["damping"]),
    )
