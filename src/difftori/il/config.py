"""Typed config of one IL training run (``difftori il train``); every field is a CLI override.

Env-derived values (observation shapes, action dimension, episode length) come from the
dataset / :class:`~difftori.envs.spec.EnvSpec` at run time and are never stored here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from difftori.utils.config import check, deep_merge

__all__ = ["ILConfig", "BCConfig", "IBCConfig", "DiffusionConfig", "DiffTORIConfig", "SolverConfig", "POLICIES", "OBS_TYPES", "IL_PRESETS",
           "IL_PRESET_RULES", "preset_for", "INFERENCE_SELECT"]

POLICIES = ("bc", "ibc", "diffusion", "difftori")
OBS_TYPES = ("pointcloud", "image", "state")

InferenceSelect = Literal["first", "lowest_cost"]
INFERENCE_SELECT: tuple[str, ...] = get_args(InferenceSelect)
"""Which of an observation's solved draws DiffTORI executes: first (draw 0, the original) or lowest_cost."""


@dataclass
class BCConfig:
    """Feed-forward behaviour cloning."""

    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the MLP head on the observation features."""

    def __post_init__(self):
        check(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), f"bc.hidden must be positive widths, got {self.hidden}")


@dataclass
class IBCConfig:
    """Implicit BC: an energy model trained with InfoNCE, derivative-free optimisation at inference."""

    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the energy MLP E(features, actions)."""
    num_negatives: int = 256
    """Counter-examples per sample, uniform in [-1, 1]."""
    temperature: float = 1.0
    """Softmax temperature of the InfoNCE logits (-E / T) and of the DFO resampling."""
    dfo_samples: int = 1024
    """Candidate action windows per observation at inference."""
    dfo_iters: int = 3
    """Resample-and-perturb rounds of the derivative-free optimiser."""
    dfo_noise: float = 0.33
    """Initial std of the perturbation noise (normalised action units)."""
    dfo_shrink: float = 0.5
    """Noise std multiplier after each round."""

    def __post_init__(self):
        check(self.num_negatives >= 1, f"ibc.num_negatives must be >= 1, got {self.num_negatives}")
        check(self.temperature > 0, f"ibc.temperature must be > 0, got {self.temperature}")
        check(self.dfo_samples >= 2 and self.dfo_iters >= 0, "ibc.dfo_samples must be >= 2 and ibc.dfo_iters >= 0")
        check(self.dfo_noise >= 0 and 0 < self.dfo_shrink <= 1, "ibc.dfo_noise must be >= 0 and ibc.dfo_shrink in (0, 1]")


@dataclass
class DiffusionConfig:
    """Diffusion policy: ConditionalUnet1D, DDPM training (epsilon prediction), DDIM sampling."""

    down_dims: tuple[int, ...] = (128, 256)
    """Channel widths of the UNet levels."""
    kernel_size: int = 5
    """Temporal conv kernel size."""
    n_groups: int = 8
    """GroupNorm groups."""
    step_embed_dim: int = 128
    """Sinusoidal diffusion-step embedding width."""
    train_timesteps: int = 100
    """DDPM noise levels (squaredcos_cap_v2 schedule)."""
    inference_steps: int = 10
    """DDIM sampling steps at inference."""
    ema_power: float = 0.75
    """EMA warm-up power: decay = 1 - (1 + step)^-power, capped at ema_max_decay."""
    ema_max_decay: float = 0.9999
    """Upper bound of the EMA decay."""
    use_ema: bool = True
    """Predict with the EMA weights (as diffusion_policy); off = the raw weights."""

    def __post_init__(self):
        check(len(self.down_dims) >= 1 and all(d > 0 for d in self.down_dims), f"diffusion.down_dims invalid: {self.down_dims}")
        check(all(d % self.n_groups == 0 for d in self.down_dims), "diffusion.down_dims must be divisible by diffusion.n_groups")
        check(self.kernel_size % 2 == 1, f"diffusion.kernel_size must be odd, got {self.kernel_size}")
        check(1 <= self.inference_steps <= self.train_timesteps, "diffusion.inference_steps must be in [1, train_timesteps]")
        check(0 <= self.ema_max_decay < 1 and self.ema_power > 0, "diffusion.ema_max_decay in [0, 1), ema_power > 0")


@dataclass
class SolverConfig:
    """The trajectory optimiser inside DiffTORI (``difftori.optim.TrajOptimizer``).

    Defaults = the released code's settings, including its packing of the batch into one problem (which sets
    the step scale); ``packed=False`` solves each sample on its own (with the same step it moves ~batch-size
    times further and measured worse: see the README).
    """

    method: Literal["gd", "adam", "newton", "gauss_newton", "lm", "lm_scalar"] = "lm_scalar"
    """Optimiser; lm_scalar is the original (LM on the single residual offset + cost)."""
    max_iters: int = 100
    """Solver iterations."""
    step_size: float = 3e-5
    """Step size of each update."""
    damping: float = 0.01
    """LM / Newton damping."""
    backward: Literal["unroll", "truncated", "implicit", "none"] = "truncated"
    """How gradients flow through the solver during training (inference always uses none)."""
    backward_iters: int = 5
    """Differentiated iterations for truncated backward (k)."""
    tol: float = 0.0
    """Early-stop tolerance on the update size (0 = always run max_iters, as the original)."""
    packed: bool | None = None
    """lm_scalar only: solve the training batch (and at inference the draws of one observation) as ONE LM problem
    on one residual mean_i(1000 - G_i), as the original; each sample then moves ~batch-size times less.
    None: True for lm_scalar, False for the other methods."""

    def __post_init__(self):
        check(self.max_iters >= 1, f"solver.max_iters must be >= 1, got {self.max_iters}")
        check(self.step_size > 0 and self.damping >= 0, "solver.step_size must be > 0 and solver.damping >= 0")
        check(self.backward_iters >= 1, f"solver.backward_iters must be >= 1, got {self.backward_iters}")
        check(self.tol >= 0, f"solver.tol must be >= 0, got {self.tol}")
        if self.packed is None:
            self.packed = self.method == "lm_scalar"
        check(not self.packed or self.method == "lm_scalar", f"solver.packed needs solver.method lm_scalar, got {self.method!r}")


@dataclass
class DiffTORIConfig:
    """DiffTORI-IL: CVAE latent + learned cost, actions = argmin of the cost by trajectory optimisation."""

    formulation: Literal["released", "paper"] = "released"
    """released: the released code's model (one cost network C(features, z, U) scores the whole action window;
    CVAE q(z | features, raw actions)); the published numbers come from it. paper: the paper's Eq. 7 /
    Appendix D: the features are mapped linearly to a latent state s0 of size encoder_dim (50 in the paper), a
    latent dynamics MLP d(s, a) -> s' and a reward MLP f(s, a, z) give the cost -sum_l gamma^l f(s_l, a_l, z),
    s_{l+1} = d(s_l, a_l), over the L = action_steps actions of the window (planning horizon action_steps - 1:
    the paper's horizon 1 on MetaWorld is --action-steps 2); CVAE = observation encoder h_o and action encoder
    h_a fused by h_l. d gets no loss of its own: it is trained by the imitation loss through the solver, as in
    the paper. --preset paper-eq7 sets the paper's other hyperparameters."""
    gamma: float = 0.99
    """paper formulation: discount of the reward sum over the window (Eq. 7's gamma; 0.99 as the paper's RL
    objective; over 2-4 actions a learned f absorbs any value near 1). Unused by the released formulation."""
    hidden: int = 256
    """Width of the hidden layers of the MLPs: two for the released CVAE encoder and cost network and for the
    paper's dynamics and reward; one for each of the paper's CVAE encoders h_o, h_a, h_l (of width hidden)."""
    z_dim: int = 64
    """CVAE latent size."""
    action_loss_weight: float = 3000.0
    """Weight of MSE(U*, demo actions) in the loss."""
    kl_weight: float = 10.0
    """Weight of the KL term (summed over latent dims, averaged over the batch)."""
    init: Literal["base", "zeros", "noise"] = "base"
    """U0: the base diffusion policy's prediction, zeros, or uniform noise in [-1, 1]."""
    init_noise: float = 0.0
    """Std of Gaussian noise added to U0 during training (the original's expert_noise)."""
    inference_samples: int | None = None
    """Latent draws z ~ N(0, I) solved per observation at inference (one base call, repeated); None = 128 with
    solver.packed (the original packs 128 draws of one observation; keep it equal to the training batch size, it
    sets the packed step scale), else 1."""
    inference_select: InferenceSelect = "first"
    """Which draw is executed: the first (the original) or the one with the lowest cost."""
    base_pool: int = 0
    """K > 0: training draws U0 from K base predictions per demo window, computed once when training starts,
    instead of calling the base afresh at every step (the original; 0). Saves the base's cost per step."""
    encoder_init: Literal["scratch", "base"] = "scratch"
    """Observation encoder at the start of training: fresh weights (the original), or a copy of the base diffusion
    policy's encoder (its EMA weights, the ones it acts with), then trained on as usual. The copy gives DiffTORI the
    base's trained features from its first step; needs init=base (the same observation keys and encoder_dim)."""
    cost_grad: Literal["autograd", "manual"] = "autograd"
    """Gradient of the released cost network w.r.t. the window in the solver's no-graph iterations: autograd, or
    manual (the features' and z's share of the first layer computed once per solve, a hand-written backward into U:
    the same values to float rounding, faster; first-order solver methods). The differentiable tail always uses
    autograd; the paper formulation always does."""
    solver: SolverConfig = field(default_factory=SolverConfig)
    """Trajectory optimiser settings."""

    @property
    def draws(self) -> int:
        """Latent draws per observation at inference (``inference_samples`` resolved)."""
        if self.inference_samples is not None:
            return self.inference_samples
        return 128 if self.solver.packed else 1

    def __post_init__(self):
        check(self.formulation in ("released", "paper"), f"difftori.formulation must be released or paper, got {self.formulation!r}")
        check(0 < self.gamma <= 1, f"difftori.gamma must be in (0, 1], got {self.gamma}")
        check(self.hidden > 0 and self.z_dim > 0, "difftori.hidden and difftori.z_dim must be > 0")
        check(self.solver.method not in ("gauss_newton", "lm"),
              f"difftori.solver.method {self.solver.method!r} needs residuals; DiffTORI's cost is one scalar per sample: use lm_scalar, newton, gd or adam")
        check(self.inference_samples is None or self.inference_samples >= 1, f"difftori.inference_samples must be >= 1 or None, got {self.inference_samples}")
        check(self.inference_select in INFERENCE_SELECT, f"difftori.inference_select must be one of {', '.join(INFERENCE_SELECT)}, got {self.inference_select!r}")
        check(self.base_pool >= 0, f"difftori.base_pool must be >= 0, got {self.base_pool}")
        check(self.encoder_init in ("scratch", "base"), f"difftori.encoder_init must be scratch or base, got {self.encoder_init!r}")
        check(self.encoder_init == "scratch" or self.init == "base", "difftori.encoder_init=base needs difftori.init=base (a base policy to copy the encoder from)")
        check(self.cost_grad in ("autograd", "manual"), f"difftori.cost_grad must be autograd or manual, got {self.cost_grad!r}")
        from difftori.optim import FIRST_ORDER_METHODS

        check(self.cost_grad == "autograd" or self.solver.method in FIRST_ORDER_METHODS,
              f"difftori.cost_grad=manual needs a first-order solver method ({', '.join(FIRST_ORDER_METHODS)}), got {self.solver.method!r}")
        check(self.action_loss_weight > 0 and self.kl_weight >= 0, "difftori.action_loss_weight > 0, kl_weight >= 0")
        check(self.init_noise >= 0, f"difftori.init_noise must be >= 0, got {self.init_noise}")


@dataclass
class ILConfig:
    """One imitation-learning run: task, policy, data, optimisation, evaluation, outputs."""

    task: str = "door-open"
    """IL task, MetaWorld or robosuite (evaluation env; must match the dataset)."""
    policy: Literal["bc", "ibc", "diffusion", "difftori"] = "diffusion"
    """Policy class to train."""
    obs_type: Literal["pointcloud", "image", "state"] = "pointcloud"
    """Observation modality: point cloud + agent state, image + agent state, or full state."""
    dataset: str | None = None
    """Demo dataset path (written by ``difftori il collect``)."""
    base_policy: str | None = None
    """DiffTORI only: checkpoint (or run dir) of a trained diffusion policy used to initialise U."""
    steps: int = 3000
    """Gradient steps."""
    batch_size: int = 128
    """Windows per gradient step."""
    lr: float = 1e-4
    """Peak learning rate (AdamW), cosine-decayed to lr_min over ``steps``."""
    lr_min: float = 1e-6
    """Final learning rate of the cosine schedule."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    weight_decay: float = 1e-6
    """AdamW weight decay."""
    grad_clip: float | None = None
    """Gradient-norm clip (None = off)."""
    encoder_dim: int = 64
    """Feature size of each modality encoder (PointNet / CNN / state MLP)."""
    encoder_precision: str = "fp32"
    """fp32, bf16 or auto. bf16: the observation encoders run under bf16 autocast (point clouds / images: the encoder
    is most of a training step on a CPU with bf16 matrix units); the policy heads, the diffusion UNet and DiffTORI's
    solve stay fp32. auto: bf16 where the device computes bf16 in hardware (AVX512-BF16 / AMX CPUs, bf16 GPUs), fp32
    where torch would emulate it (slower than fp32); the run's ``runtime.json`` records which."""
    obs_steps: int = 2
    """Observation frames the policy sees (To)."""
    action_steps: int = 4
    """Actions predicted and executed per decision (Ta, receding horizon)."""
    log_freq: int = 50
    """Write a train.csv row every this many steps."""
    eval_freq: int = 1000
    """Evaluate the success rate every this many steps (0 = only at the end)."""
    eval_episodes: int = 20
    """Episodes per evaluation (0 = no evaluation)."""
    eval_max_steps: int | None = None
    """Cap on env steps per evaluation episode (None = the task's episode length)."""
    eval_stop_on_success: bool = True
    """End an evaluation episode at its first success (as robomimic's rollouts do): the success rate is that of
    full-length episodes (an episode succeeds if any step does), evaluation is cheaper; returns and lengths count up to
    the success. False: every episode runs its full length (DP3's MetaWorld evaluation)."""
    eval_envs: int = 10
    """Evaluation episodes run side by side in this many envs, one batched policy call per decision (1 = one at a
    time). The env seeds are the same either way; only the order of the policy's sampling noise changes."""
    checkpoint_freq: int = 500
    """Save a resumable checkpoint every this many steps (and always at the end)."""
    seed: int = 1
    """Random seed (training and evaluation)."""
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu or cuda[:N]."""
    num_threads: int | None = None
    """torch CPU threads; None leaves torch's default."""
    progress: bool = True
    """Show progress (a bar on a terminal, a line every few seconds in a log)."""
    run_root: str = "runs/il"
    """Root of the run directories (root/task/policy/seed<s>/<time>)."""
    label: str | None = None
    """Optional variant label shown in plots."""
    bc: BCConfig = field(default_factory=BCConfig)
    """Feed-forward BC settings."""
    ibc: IBCConfig = field(default_factory=IBCConfig)
    """Implicit BC settings."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """Diffusion policy settings."""
    difftori: DiffTORIConfig = field(default_factory=DiffTORIConfig)
    """DiffTORI settings (incl. the solver)."""

    def __post_init__(self):
        check(self.policy in POLICIES, f"policy must be one of {POLICIES}, got {self.policy!r}")
        check(self.obs_type in OBS_TYPES, f"obs_type must be one of {OBS_TYPES}, got {self.obs_type!r}")
        check(self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be >= 1")
        check(self.lr > 0 and 0 <= self.lr_min <= self.lr, "need lr > 0 and 0 <= lr_min <= lr")
        check(self.warmup_steps >= 0 and self.weight_decay >= 0, "warmup_steps and weight_decay must be >= 0")
        check(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or None, got {self.grad_clip}")
        check(self.encoder_dim > 0, f"encoder_dim must be > 0, got {self.encoder_dim}")
        check(self.obs_steps >= 1 and self.action_steps >= 1, "obs_steps and action_steps must be >= 1")
        check(self.log_freq >= 1 and self.eval_freq >= 0 and self.checkpoint_freq >= 1, "log_freq, checkpoint_freq >= 1 and eval_freq >= 0")
        check(self.eval_episodes >= 0, f"eval_episodes must be >= 0, got {self.eval_episodes}")
        check(self.eval_max_steps is None or self.eval_max_steps >= 1, "eval_max_steps must be >= 1 or None")
        check(self.eval_envs >= 1, f"eval_envs must be >= 1, got {self.eval_envs}")
        check(self.encoder_precision in ("fp32", "bf16", "auto"), f"encoder_precision must be fp32, bf16 or auto, got {self.encoder_precision!r}")
        check(self.num_threads is None or self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}")
        if self.policy == "difftori" and self.difftori.formulation == "paper":
            check(self.action_steps >= 2, f"difftori.formulation paper needs action_steps >= 2 (planning horizon = action_steps - 1), got {self.action_steps}")
        if self.policy == "difftori" and self.difftori.init == "base":
            check(bool(self.base_policy), "policy difftori with difftori.init=base needs --base-policy (a trained diffusion checkpoint or run dir); or set --difftori.init zeros|noise")


IL_PRESETS: dict[str, dict] = {
    # The published DiffTORI-IL settings (METHOD.md): batch 128, lr 1e-4 cosine to 1e-6 (the released code builds
    # that schedule but never steps it, so its lr stays 1e-4), PointNet-LN 64-D encoder, 2 obs / 4 action steps,
    # CVAE z 64, MLPs 256-256, loss 3000 MSE + 10 KL, LM 100 iterations, step 3e-5, damping 0.01, truncated
    # backward k=5, the batch packed into one problem, 128 packed draws per observation at inference (draw 0
    # executed), a fresh base prediction at every step.
    "paper": dict(
        batch_size=128, lr=1e-4, lr_min=1e-6, warmup_steps=0, weight_decay=0.0, encoder_dim=64, obs_steps=2, action_steps=4, eval_episodes=20,
        difftori=dict(
            hidden=256, z_dim=64, action_loss_weight=3000.0, kl_weight=10.0, init="base", init_noise=0.0,
            inference_samples=128, inference_select="first", base_pool=0,
            solver=dict(method="lm_scalar", max_iters=100, step_size=3e-5, damping=0.01, backward="truncated", backward_iters=5, tol=0.0, packed=True),
        ),
    ),
    # CPU-sized: batch 32, base predictions from a pool of 8 per window (no base call per step), 10 evaluation
    # episodes, and a cheaper solver: 10 unrolled projected-gradient steps (step 0.1) on the learned cost, one
    # draw per observation. Measured on pick-place (state, 10 demos, 400 steps at lr 1e-3): training action MSE
    # 0.44x the base's, as 100 packed LM iterations (0.45x) at ~1/4 of the training step and of the evaluation
    # cost; 25 packed LM iterations: 0.64x; per-sample LM: 1.29x (diverges). Train DiffTORI with --lr 1e-3:
    # at lr 1e-4 the solve moves the base's actions by < 1% in 400 steps.
    "small": dict(
        batch_size=32, lr=1e-4, lr_min=1e-6, encoder_dim=64, eval_episodes=10,
        difftori=dict(
            inference_samples=1, inference_select="first", base_pool=8,
            solver=dict(method="gd", max_iters=10, step_size=0.1, backward="unroll", tol=0.0, packed=False),
        ),
    ),
    # The paper's formulation and Appendix D / Table 9 hyperparameters (METHOD.md, "The paper and the released code
    # differ"): Eq. 7 with latent dynamics, planning horizon 1 (2 actions per window), latent 50, CVAE z 64,
    # plain ELBO (MSE + KL, weights 1 / 1), lr 3e-4 (constant: the paper gives no schedule), batch 128, one draw
    # per observation, implicit differentiation, no packing. Solver: newton and adam were measured to drive a
    # freshly initialised model's argmax onto the corners of the box (f is nearly linear in a at init; every
    # coordinate active -> zero implicit gradient -> no learning: linear_state_data, 200 steps, action MSE 4.4x
    # the best constant's for both), projected gd with step 0.1 moves gradually, stays inside, and learns (0.34x
    # with 50 iterations after 300 steps, 0.55x with 20 after 200); tol stops samples whose gradient has vanished.
    "paper-eq7": dict(
        batch_size=128, lr=3e-4, lr_min=3e-4, encoder_dim=50, obs_steps=2, action_steps=2, eval_episodes=20,
        difftori=dict(
            formulation="paper", gamma=0.99, hidden=256, z_dim=64, action_loss_weight=1.0, kl_weight=1.0, init="base",
            inference_samples=1, inference_select="first", base_pool=0,
            solver=dict(method="gd", max_iters=50, step_size=0.1, backward="implicit", tol=1e-4, packed=False),
        ),
    ),
}
"""Named starting points for ``difftori il train --preset NAME``: applied over the defaults (and over
``--config``), under every option given on the command line."""

IL_PRESET_RULES: dict[str, list[tuple[str, Callable[[ILConfig], bool], dict[str, Any]]]] = {
    "small": [
        ("DiffTORI: lr 1e-3 (at 1e-4 the solve moves the base's actions by < 1% in a CPU budget)",
         lambda c: c.policy == "difftori", dict(lr=1e-3)),
        ("point clouds and images: lr 1e-3 for every policy (at 1e-4 the diffusion policy has not fitted its demos "
         "after 2000 steps; benchmarks/results/il_budget.md)",
         lambda c: c.obs_type != "state", dict(lr=1e-3)),
        ("DiffTORI on point clouds and images: its encoder starts from its base's (1000 steps do not train a "
         "point-cloud encoder from scratch)",
         lambda c: c.policy == "difftori" and c.obs_type != "state" and c.difftori.init == "base",
         dict(difftori=dict(encoder_init="base"))),
        ("DiffTORI with a first-order solver: the cost's gradient by hand in the no-graph iterations (equal values, "
         "faster)",
         lambda c: c.policy == "difftori" and c.difftori.solver.method in ("gd", "adam", "lm_scalar"),
         dict(difftori=dict(cost_grad="manual"))),
    ],
}
"""Settings a preset gives only some runs: ``(why, applies_to(config), settings)``. A rule is tested on the run's
config with the preset's plain settings, and its settings join the preset's (the options given still win):
``il train --preset small`` is what ``benchmarks/il_compare.py`` runs (which adds ``--encoder-precision auto`` on the
rendered modalities: a speed choice for CPUs with bf16 units, left out of the preset)."""


def preset_for(name: str, probe: Callable[[dict[str, Any]], ILConfig]) -> dict[str, Any]:
    """The settings of preset ``name`` for one run: :data:`IL_PRESETS` ``[name]`` plus every rule of
    :data:`IL_PRESET_RULES` that applies to ``probe(preset)`` (the run's config under the preset's plain settings)."""
    settings = IL_PRESETS[name]
    rules = IL_PRESET_RULES.get(name, [])
    if not rules:
        return settings
    cfg = probe(settings)
    out = dict(settings)
    for _, applies, extra in rules:
        if applies(cfg):
            out = deep_merge(out, extra)
    return out

