"""Shared glue of the tools: model resolution, token retrieval, writing results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _logging as logg
from .._keys import tokens_obs_keys

if TYPE_CHECKING:
    from anndata import AnnData

    from .._pretrained import MixGeneformer


def resolve_model(model: Any, device: str | None = None) -> MixGeneformer:
    """`None` -> the bundled default model; a path -> a model directory; a `MixGeneformer` as is."""
    from .._pretrained import MixGeneformer

    if isinstance(model, MixGeneformer):
        return model
    return MixGeneformer.load(model)


def get_tokens(adata: AnnData, model: MixGeneformer, tokens_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and lengths of every cell; tokenizes with the model's vocabulary when they are missing."""
    n_key, _ = tokens_obs_keys(tokens_key)
    if tokens_key not in adata.obsm:
        from ..pp import rank_tokenize

        logg.info(f"no tokens in adata.obsm[{tokens_key!r}]: tokenizing with the vocabulary of model {model.name!r}")
        rank_tokenize(adata, vocab=model.vocab, key_added=tokens_key)
    params = adata.uns.get(tokens_key, {}).get("params", {})
    sha = params.get("vocab_sha256")
    if sha is not None and sha != model.vocab.sha256:
        msg = (
            f"adata.obsm[{tokens_key!r}] was tokenized with vocabulary {params.get('vocab')!r} "
            f"(sha256 {str(sha)[:12]}…), but model {model.name!r} uses vocabulary {model.vocab.name!r} "
            f"(sha256 {model.vocab.sha256[:12]}…): token ids would mean different genes. Re-run "
            f"`mgf.pp.rank_tokenize(adata, vocab=model.vocab, key_added=...)` with the model's vocabulary."
        )
        raise ValueError(msg)
    tokens = np.asarray(adata.obsm[tokens_key])
    if n_key in adata.obs:
        lengths = adata.obs[n_key].to_numpy().astype(np.int64)
    else:
        lengths = (tokens != model.vocab.id_of("pad")).sum(axis=1).astype(np.int64)
    if tokens.max(initial=0) >= len(model.vocab):
        msg = f"adata.obsm[{tokens_key!r}] holds token ids beyond the vocabulary of model {model.name!r}."
        raise ValueError(msg)
    return tokens, lengths


def uns_key(key_added: str) -> str:
    """Scanpy's convention: ``obsm['X_name']`` goes with ``uns['name']``."""
    return key_added[2:] if key_added.startswith("X_") else key_added


def prepare_target(adata: AnnData, *, copy: bool) -> AnnData:
    """The AnnData to write into: a copy, or ``adata`` itself (a view is made actual, with a warning)."""
    if copy:
        return adata.copy()
    if getattr(adata, "is_view", False):
        logg.warn("received a view of an AnnData; making a copy to store the results.")
        adata._init_as_actual(adata.copy())
    return adata
