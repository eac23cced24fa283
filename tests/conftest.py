"""Shared test setup: the repo on sys.path, float32 CPU JAX, and the location of the optional real data."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

DATA_DIR = os.environ.get("MEMR1_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))
# 8 virtual CPU devices so sharding tests run in-process (must be set before jax is imported).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
