"""Benchmarks. Run `python -m artstyle_jax.bench {backbone,step,memory,cost,data,profile,suite} --help`."""
