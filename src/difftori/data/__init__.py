"""Demonstration datasets: collection, chunked storage, window sampling, normalizers."""

from difftori.data.dataset import (
    FORMAT,
    FORMAT_VERSION,
    DemoData,
    DemoFormatError,
    DemoWindowDataset,
    load_demos,
    save_demos,
)
from difftori.data.normalizer import Normalizer

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DemoData",
    "DemoFormatError",
    "DemoWindowDataset",
    "load_demos",
    "save_demos",
    "Normalizer",
    "collect_demos",
    "CollectReport",
]


def __getattr__(name):  # collection pulls in the env stack; import it on first use
    if name in ("collect_demos", "CollectReport"):
        from difftori.data import collect

        return getattr(collect, name)
    raise AttributeError(f"module 'difftori.data' has no attribute {name!r}")
