"""JAX/Flax reimplementation of the VGGSound audio classifier."""
