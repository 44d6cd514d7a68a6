"""Benchmarks. Not tests: they measure, print and record, and fail only when broken."""
