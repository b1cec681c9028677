"""Shared plumbing: typed configs, run directories, metric logging, atomic I/O, devices, seeding."""
