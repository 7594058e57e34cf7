"""Benchmarks. Run `python -m artstyle_jax.bench {backbone,step,data} --help`."""
