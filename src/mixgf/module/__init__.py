"""Torch modules and model I/O: the encoder and its heads, pooling, losses, model directories, checkpoint import.

Depends only on torch, numpy, safetensors and the package's settings (the CPU fast path; :mod:`mixgf.genes`
nowhere); the public names are re-exported by :mod:`mixgf.model`.
"""
