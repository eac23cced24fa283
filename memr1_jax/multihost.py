"""Moving arrays between the hosts' numpy world and global (multi-process) jax.Arrays.

Every host runs the same program on the same data (episodes are deterministic from (seed, step)), so a host-side
batch is identical on all hosts and a device result is needed on all hosts. In one process these helpers are plain
`jax.device_put` / `jax.device_get`; across processes `put_global` builds each host's shards from its own copy (no
communication) and `to_host` all-gathers arrays whose shards live on other hosts.
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from memr1_jax import sharding as sharding_lib


def put_global(tree, shardings):
  """Places host-identical numpy leaves of `tree` on `shardings` (one Sharding or a matching tree of them).

  Returns the tree of jax.Arrays. Across processes every host must pass the same values (not checked here:
  each host fills only its own devices' shards from its copy).
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

  return jax.tree.map(put, tree, shardings)


def shard_batch(batch, mesh: Mesh):
  """`put_global` of every [B, ...] leaf with `sharding.batch_sharding` (B over data * fsdp)."""
  return jax.tree.map(lambda x: put_global(x, sharding_lib.batch_sharding(mesh, np.ndim(x))), batch)


def to_host(tree):
  """numpy copies of every leaf, on every host; leaves with shards on other hosts are all-gathered first.

  Across processes all hosts must call it with the same tree (the all-gather is a collective).
  """

  if jax.process_count() == 1:
    return jax.device_get(tree)

  def gather(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      if x.sharding.memory_kind == "pinned_host":  # The all-gather runs on the devices.
        x = jax.device_put(x, x.sharding.with_memory_kind("device"))
      return multihost_utils.process_allgather(x, tiled=True)
    return x

  return jax.device_get(jax.tree.map(gather, tree))


def tree_checksum(tree) -> str:
  """SHA-256 hex digest of every leaf's bytes (fetched with `to_host`) in tree order; equal trees give equal sums."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(to_host(tree)):
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{leaf.dtype}{leaf.shape}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()
