"""Benchmarks of ``optax_rmsprop`` against ``optax.rmsprop`` and PyTorch.

Run ``python -m benchmarks`` (``make bench``) for the full run, or
``python -m benchmarks --smoke`` for tiny shapes and one repetition. Each
``bench_*`` module has ``run(smoke, repeats=None) -> list[dict]`` returning
records (one flat dict per measurement) and ``table(records) -> str``.
"""
