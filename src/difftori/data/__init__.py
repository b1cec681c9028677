"""Demonstration datasets: collection, chunked storage, window sampling, normalizers."""
