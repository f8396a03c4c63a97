"""Engines: the work behind the tools, on arrays and tensors (they know nothing of AnnData).

Tokenization kernels (``_tokenize``), the device/dtype resolver (``_device``), the one token-budget batcher and
the inference batch loop with out-of-memory back-off and progress (``_batching``), the one forward path (token
rows -> padded or packed batch -> encoder under autocast -> fp32 pooling, ``_forward``), cell embedding
(``_inference``), contextual gene states (``_gene_states``), multi-process helpers (``_distributed``),
perturbation screens and their statistics (``perturb``), training loops (``train``). Importing this package imports nothing:
``_tokenize`` and ``_metrics`` need only numpy/numba, the rest torch.
"""
