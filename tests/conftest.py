"""Shared test setup: the repo on sys.path, float32 CPU JAX, and the location of the optional real data."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

DATA_DIR = os.environ.get("MEMR1_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))
