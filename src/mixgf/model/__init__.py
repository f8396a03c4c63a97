"""Pure-torch model core of mixgf.

A BERT encoder numerically equivalent to Hugging Face ``BertForMaskedLM`` (the Geneformer
architecture), cell embedding with token-budget batching, and safe checkpoint I/O.

This subpackage depends only on :mod:`torch`, :mod:`numpy` and :mod:`safetensors`.

Main entry points
-----------------
:class:`EncoderConfig`
    Model hyper-parameters (``from_hf_dict`` reads a Hugging Face BERT ``config.json``).
:class:`BertEncoderModel`
    The encoder: padded (:meth:`~BertEncoderModel.forward`) and packed
    (:meth:`~BertEncoderModel.forward_packed`) paths over the same weights, optional MLM head.
:func:`embed_tokens`
    Tokenised cells -> ``[N, H]`` float32 embeddings (length-sorted token-budget batches,
    out-of-memory back-off).
:func:`partition_cells`, :func:`all_gather_rows`, :func:`rank_device`
    Multi-process (``torchrun``) inference: share out cells, gather results in cell order, one GPU per rank.
:func:`import_hf_bert`
    Import Geneformer / Mouse-Geneformer / Mix-Geneformer checkpoints.
:func:`save_model_dir`, :func:`load_model_dir`
    mixgf model directories (safetensors + sha256 manifest).
"""

from __future__ import annotations

from ._batching import (
    DEFAULT_TOKEN_BUDGET_CPU,
    DEFAULT_TOKEN_BUDGET_CUDA,
    embed_tokens,
    make_batches,
    resolve_device,
    resolve_dtype,
)
from ._checkpoint import (
    FORMAT_VERSION,
    LoadedModel,
    check_state_dict,
    expected_state_shapes,
    hf_to_mixgf_state_dict,
    import_hf_bert,
    load_model_dir,
    save_model_dir,
    verify_model_dir,
)
from ._classifier import ClassifierHead, FinetuneConfig, finetune_classifier, fit_temperature, predict_logits
from ._config import SUPPORTED_ACTIVATIONS, EncoderConfig
from ._distributed import (
    all_gather_rows,
    all_reduce_scalar,
    is_distributed,
    local_share,
    partition_cells,
    rank_device,
    rank_world,
    use_distributed,
)
from ._encoder import (
    BertEncoderModel,
    EncoderLayer,
    MLMHead,
    describe,
    packed_position_ids,
    resolve_layer,
    varlen_available,
)
from ._genes import token_state_means
from ._losses import info_nce, mask_tokens, mean_pool
from ._perturb import PERTURB_MODES, PerturbationResult, perturb_cell, perturbation_shifts
from ._pooling import gene_token_mask, pool_packed, pool_padded
from ._pretrain import (
    ConcatRows,
    PaddedRows,
    PretrainConfig,
    RowSource,
    TokenCorpus,
    latest_checkpoint,
    pretrain_encoder,
)

__all__ = [
    "DEFAULT_TOKEN_BUDGET_CPU",
    "DEFAULT_TOKEN_BUDGET_CUDA",
    "FORMAT_VERSION",
    "PERTURB_MODES",
    "SUPPORTED_ACTIVATIONS",
    "BertEncoderModel",
    "ClassifierHead",
    "ConcatRows",
    "EncoderConfig",
    "EncoderLayer",
    "FinetuneConfig",
    "LoadedModel",
    "MLMHead",
    "PaddedRows",
    "PerturbationResult",
    "PretrainConfig",
    "RowSource",
    "TokenCorpus",
    "all_gather_rows",
    "all_reduce_scalar",
    "check_state_dict",
    "describe",
    "embed_tokens",
    "expected_state_shapes",
    "finetune_classifier",
    "fit_temperature",
    "gene_token_mask",
    "hf_to_mixgf_state_dict",
    "import_hf_bert",
    "info_nce",
    "is_distributed",
    "latest_checkpoint",
    "load_model_dir",
    "local_share",
    "make_batches",
    "mask_tokens",
    "mean_pool",
    "packed_position_ids",
    "partition_cells",
    "perturb_cell",
    "perturbation_shifts",
    "pool_packed",
    "pool_padded",
    "predict_logits",
    "pretrain_encoder",
    "rank_device",
    "rank_world",
    "resolve_device",
    "resolve_dtype",
    "resolve_layer",
    "save_model_dir",
    "token_state_means",
    "use_distributed",
    "varlen_available",
    "verify_model_dir",
]
