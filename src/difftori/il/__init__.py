"""Imitation learning: BC, IBC, diffusion policy and DiffTORI-IL."""
