"""Pure-torch model core of mixgf (the public names of :mod:`mixgf.module` and the engines below the tools).

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

from ..engine._batching import make_batches
from ..engine._device import cpu_supports_bf16, rank_device, resolve_device, resolve_dtype
from ..engine._distributed import (
    all_gather_rows,
    all_reduce_scalar,
    is_distributed,
    partition_cells,
    rank_world,
    use_distributed,
)
from ..engine._gene_states import token_state_means
from ..engine._inference import DEFAULT_TOKEN_BUDGET_CPU, DEFAULT_TOKEN_BUDGET_CUDA, embed_tokens
from ..engine.perturb._copies import PERTURB_MODES, PerturbationResult, perturb_cell, perturbation_shifts
from ..engine.train._classifier import FinetuneConfig, finetune_classifier, fit_temperature, predict_logits
from ..engine.train._pretrain import (
    ConcatRows,
    PaddedRows,
    PretrainConfig,
    RowSource,
    TokenCorpus,
    latest_checkpoint,
    pretrain_encoder,
)
from ..module._checkpoint import (
    FORMAT_VERSION,
    LoadedModel,
    check_state_dict,
    expected_state_shapes,
    load_model_dir,
    save_model_dir,
    verify_model_dir,
)
from ..module._config import SUPPORTED_ACTIVATIONS, EncoderConfig
from ..module._encoder import (
    BertEncoderModel,
    describe,
    packed_position_ids,
    resolve_layer,
    varlen_available,
)
from ..module._heads import ClassifierHead
from ..module._hf import hf_to_mixgf_state_dict, import_hf_bert
from ..module._layers import EncoderLayer, MLMHead
from ..module._losses import info_nce, mask_tokens
from ..module._pooling import gene_token_mask, pool_packed, pool_padded

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
    "cpu_supports_bf16",
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
    "make_batches",
    "mask_tokens",
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
