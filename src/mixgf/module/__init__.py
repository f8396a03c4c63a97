"""Torch modules and model I/O: the encoder and its heads, pooling, losses, model directories, checkpoint import.

Depends only on torch, numpy and safetensors (and :mod:`mixgf.genes` nowhere); the public names are re-exported by
:mod:`mixgf.model`.
"""
