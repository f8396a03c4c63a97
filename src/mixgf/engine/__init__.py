"""Engines: the work behind the tools, on arrays and tensors (they know nothing of AnnData).

Tokenization kernels (``_tokenize``), the device/dtype resolver (``_device``), inference with token-budget
batches and out-of-memory back-off (``_inference``), multi-process helpers (``_distributed``), perturbation
screens and their statistics (``perturb``), training loops (``train``). Importing this package imports nothing:
``_tokenize`` and ``_metrics`` need only numpy/numba, the rest torch.
"""
