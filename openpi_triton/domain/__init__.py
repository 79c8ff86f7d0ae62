"""The policy domain both runtimes stand on: openpi's config table, the embodiments' input and output
transforms, normalisation and the batch buckets. It imports no runtime (no JAX, no openpi), so the native
runtime and the openpi adapter each depend on it and never on each other.
"""
