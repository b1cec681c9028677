"""Model-based RL: world model, TD-MPC baseline, DiffTORI agent, trainer."""
