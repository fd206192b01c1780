"""Test set-up: eight simulated CPU devices, before anything touches JAX."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402

# pmap and sharding tests need several devices; on a CPU-only machine XLA
# simulates them. This must run before any JAX computation.
jax.config.update("jax_num_cpu_devices", 8)
