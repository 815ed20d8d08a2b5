"""JAX's persistent compilation cache, shared by every command and by the processes of one run."""

from __future__ import annotations

import os
from pathlib import Path

import jax

CACHE_MAX_BYTES = 4 << 30  # least recently used programs are evicted beyond this
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vggsound_jax" / "jax"


def enable_compilation_cache(cache_dir: str | os.PathLike | None = None) -> None:
  """Keeps compiled programs on disk so that repeated runs skip XLA compilation."""
  cache_dir = Path(cache_dir or os.environ.get("VGGSOUND_JAX_CACHE", DEFAULT_CACHE_DIR))
  cache_dir.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(cache_dir))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  # A size limit turns on JAX's file lock around every read and write of the cache, so the
  # processes of one run, and runs side by side, never read an entry another is still writing.
  jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
