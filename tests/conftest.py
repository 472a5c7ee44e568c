"""Test-wide settings (the shared helpers are in tests/helpers.py)."""

import jax

# Parity tests compare against PyTorch's fp32 matmuls; XLA's CPU default is fp32 too,
# "highest" only makes that explicit for backends that would use bf16 passes.
jax.config.update("jax_default_matmul_precision", "highest")
