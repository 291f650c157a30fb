"""Benchmarks: each prints numbers side by side with what we compare against, in one run."""
