"""difftori: differentiable trajectory optimization as a policy class for deep RL and imitation learning.

Layout (architecture):
- ``difftori.optim``  batched differentiable trajectory optimizer (pure PyTorch; the core).
- ``difftori.models`` networks shared by agents and policies (MLPs, encoders).
- ``difftori.envs``   DeepMind Control and MetaWorld environments by task name.
- ``difftori.data``   demonstration datasets, window sampling, normalizers.
- ``difftori.rl``     model-based RL agents (TD-MPC baseline, DiffTORI) and their trainer.
- ``difftori.il``     imitation policies (BC, IBC, diffusion, DiffTORI-IL) and their trainer.
- ``difftori.utils``  configs, run directories, logging, atomic I/O, devices, seeding.
"""

__version__ = "0.1.0"
