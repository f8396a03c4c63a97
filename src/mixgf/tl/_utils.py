"""Shared glue of the tools: model resolution, token retrieval, writing results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _logging as logg
from .._keys import tokens_obs_keys
from .._version import __version__

if TYPE_CHECKING:
    from anndata import AnnData

    from .._models._mixgeneformer import MixGeneformer


def resolve_model(model: Any) -> MixGeneformer:
    """`None` -> the bundled default model; a path -> a model directory; a `MixGeneformer` as is."""
    from .._models._mixgeneformer import MixGeneformer

    if isinstance(model, MixGeneformer):
        return model
    return MixGeneformer.load(model)


def provenance(
    model: MixGeneformer,
    *,
    device: Any = None,
    dtype: Any = None,
    **fields: Any,
) -> dict[str, Any]:
    """The ``uns[key]["params"]`` every tool records: which model and vocabulary, how and where it ran.

    Model name, whether it was trained, weights and vocabulary sha256, then the tool's own ``fields`` (`None` is
    written as ``""``), the device and compute dtype when given, and the mixgf version.
    """
    params: dict[str, Any] = {
        "model": model.name,
        "model_trained": model.trained,
        "weights_sha256": model.weights_sha256 or "",
        "vocab": model.vocab.name,
        "vocab_sha256": model.vocab.sha256,
        **{k: ("" if v is None else v) for k, v in fields.items()},
    }
    if device is not None:
        params["device"] = str(device)
    if dtype is not None:
        params["dtype"] = str(dtype).removeprefix("torch.")
    params["mixgf_version"] = __version__
    return params


STORE_CHUNK_TOKENS = 1 << 24
"""Padded tokens read from a token store at a time by the streaming tools (bounds host memory)."""


class TokenSource:
    """The tokens of an AnnData's cells: an in-memory ``obsm`` matrix or an on-disk token store.

    Positions are the AnnData's cell positions. With a store, only the requested cells are read.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        pad_id: int,
        *,
        tokens: np.ndarray | None = None,
        store: Any = None,
        rows: np.ndarray | None = None,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.pad_id = int(pad_id)
        self.tokens = tokens
        self.store = store
        self._rows = rows  # store row of each cell; None: cell i is store row i

    @property
    def n_obs(self) -> int:
        """Number of cells."""
        return int(self.lengths.shape[0])

    @property
    def in_memory(self) -> bool:
        """Whether the tokens are an in-memory matrix (``obsm``)."""
        return self.tokens is not None

    def chunk_cells(self, max_tokens: int | None = None) -> int:
        """Cells per block such that a padded block holds at most about ``max_tokens`` tokens.

        `None`: :data:`STORE_CHUNK_TOKENS`.
        """
        budget = STORE_CHUNK_TOKENS if max_tokens is None else int(max_tokens)
        longest = int(self.lengths.max(initial=1))
        return max(1, budget // max(longest, 1))

    def block(self, start: int, stop: int) -> np.ndarray:
        """Padded tokens of cells ``start:stop``."""
        if self.tokens is not None:
            return np.asarray(self.tokens[start:stop])
        if self._rows is None:
            return self.store.padded(start, stop)[0]
        return self.take(np.arange(start, stop))

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Padded tokens of the cells at positions ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.tokens is not None:
            return np.asarray(self.tokens[idx])
        rows = idx if self._rows is None else self._rows[idx]
        seqs = self.store.rows(rows)
        width = max((s.shape[0] for s in seqs), default=1)
        out = np.full((len(seqs), max(width, 1)), self.pad_id, dtype=self.store.dtype)
        for i, s in enumerate(seqs):
            out[i, : s.shape[0]] = s
        return out

    def all(self) -> np.ndarray:
        """Padded tokens of every cell (the whole matrix: for a store, prefer :meth:`block` over ranges)."""
        if self.tokens is not None:
            return self.tokens
        return self.block(0, self.n_obs)


def store_path(adata: AnnData, tokens_key: str) -> str | None:
    """The token store named by ``adata.uns[tokens_key]["store"]`` when ``adata.obsm`` holds no tokens there."""
    if tokens_key in adata.obsm:
        return None
    entry = adata.uns.get(tokens_key)
    path = entry.get("store") if isinstance(entry, dict) else None
    return str(path) if path else None


def _vocab_error(where: str, params: dict, model: MixGeneformer) -> ValueError:
    msg = (
        f"{where} was tokenized with vocabulary {params.get('vocab')!r} "
        f"(sha256 {str(params.get('vocab_sha256'))[:12]}…), but model {model.name!r} uses vocabulary "
        f"{model.vocab.name!r} (sha256 {model.vocab.sha256[:12]}…): token ids would mean different genes. Re-run "
        f"`mgf.pp.rank_tokenize(adata, vocab=model.vocab, key_added=...)` with the model's vocabulary."
    )
    return ValueError(msg)


def _open_store(adata: AnnData, model: MixGeneformer, tokens_key: str, path: str) -> TokenSource:
    import pandas as pd

    from ..pp import TokenStore

    store = TokenStore.open(path)
    where = f"The token store {path!r} (adata.uns[{tokens_key!r}]['store'])"
    sha = store.params.get("vocab_sha256")
    if sha is not None and sha != model.vocab.sha256:
        raise _vocab_error(where, store.params, model)
    names = pd.Index(adata.obs_names)
    stored = pd.Index(store.obs_names)
    rows = None
    if not names.equals(stored):
        ok = names.is_unique and stored.is_unique
        rows = stored.get_indexer(names) if ok else None
        if rows is None or (rows < 0).any():
            missing = names[rows < 0][:3].tolist() if rows is not None else []
            msg = (
                f"{where} holds {store.n_cells:,} cells that do not match the {adata.n_obs:,} cells of adata"
                + (f" (e.g. {missing} are not in the store)" if missing else " (obs names are not unique)")
                + ". Tokenize this AnnData again (`mgf.pp.rank_tokenize(adata, store=..., overwrite=True)`) or "
                "subset it only after tokenizing into the store."
            )
            raise ValueError(msg)
        if np.array_equal(rows, np.arange(store.n_cells)):
            rows = None
    lengths = store.lengths if rows is None else store.lengths[rows]
    pad_id = int(store.params.get("pad_id", model.vocab.id_of("pad")))
    return TokenSource(lengths, pad_id, store=store, rows=rows)


def untrained_present(model: MixGeneformer, tokens: np.ndarray) -> np.ndarray:
    """Ids of the model's untrained gene tokens (never in its training cells) that occur in ``tokens``."""
    vocab = model.vocab
    if vocab.untrained is None or not vocab.untrained.size:
        return np.empty(0, dtype=np.int64)
    present = np.zeros(len(vocab), dtype=bool)
    ids = np.asarray(tokens, dtype=np.int64).ravel()
    present[ids[ids >= 0] if ids.size and ids.min() < 0 else ids] = True  # one pass, no sort
    return np.flatnonzero(present & ~vocab.trained)


def warn_untrained(model: MixGeneformer, ids: np.ndarray, *, tested: bool) -> None:
    """Say once that genes of the call have untrained tokens: tested genes (``tested``) or genes of the cells."""
    if not len(ids):
        return
    from ..genes import id_to_symbol

    vocab = model.vocab
    names = [id_to_symbol(str(vocab.gene_species[i])).get(vocab.tokens[i], vocab.tokens[i]) for i in ids[:5]]
    more = f" and {len(ids) - 5:,} more" if len(ids) > 5 else ""
    one = len(ids) == 1
    if tested:
        logg.warn(
            f"{', '.join(names)}{more} {'was' if one else 'were'} not in the training data of model {model.name!r}: "
            f"{'its token embedding is' if one else 'their token embeddings are'} untrained, so "
            f"{'its effect is' if one else 'their effects are'} not meaningful for this model (results column "
            "'in_training_data')."
        )
    else:
        logg.warn(
            f"{len(ids):,} gene(s) of these cells ({', '.join(names)}{more}) were not in the training data of model "
            f"{model.name!r}: their token embeddings are untrained (the mean of the trained ones), so they add "
            "nothing of their own to the cell embeddings."
        )


def check_not_empty(adata: AnnData, action: str) -> None:
    """Refuse an AnnData without cells before anything is computed or written."""
    if adata.n_obs == 0:
        msg = f"adata has 0 cells: nothing to {action}. Check the filtering or subsetting that produced it."
        raise ValueError(msg)


def split_layer(layer: Any, hidden_layer: int | None, *, default: int | None) -> tuple[str | None, int | None]:
    """``(counts layer, hidden layer)`` from a tool's ``layer`` and ``hidden_layer`` arguments.

    ``layer`` names an AnnData layer, as everywhere in scanpy; an integer ``layer`` is the spelling of the
    transformer layer before ``hidden_layer`` existed: accepted for one release with a FutureWarning.
    """
    if layer is None or isinstance(layer, str):
        return layer, default if hidden_layer is None else int(hidden_layer)
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
        msg = f"layer must name an AnnData layer (a str), got {layer!r}; the transformer layer is hidden_layer=."
        raise TypeError(msg)
    if hidden_layer is not None and int(hidden_layer) != int(layer):
        msg = f"layer={layer} (the old spelling of hidden_layer) and hidden_layer={hidden_layer} disagree: pass only hidden_layer."
        raise ValueError(msg)
    logg.warn(
        f"layer={int(layer)} as the transformer layer is deprecated and will be removed in the next release: pass "
        f"hidden_layer={int(layer)}. layer= names the AnnData layer with the raw counts, as in scanpy.",
        FutureWarning,
    )
    return None, int(layer)


def token_source(
    adata: AnnData, model: MixGeneformer, tokens_key: str, *, layer: str | None = None, use_raw: bool = False
) -> TokenSource:
    """Where the tokens of every cell are.

    ``adata.obsm[tokens_key]``, or the token store named in ``adata.uns[tokens_key]["store"]`` (its vocabulary and
    cells checked against the model and ``adata``); tokenizes with the model's vocabulary (into ``obsm``) when
    neither exists, reading the counts from ``layer`` or ``adata.raw`` (``use_raw``).
    """
    n_key, _ = tokens_obs_keys(tokens_key)
    path = store_path(adata, tokens_key)
    if path is not None:
        return _open_store(adata, model, tokens_key, path)
    if tokens_key not in adata.obsm:
        from ..pp import rank_tokenize

        logg.info(f"no tokens in adata.obsm[{tokens_key!r}]: tokenizing with the vocabulary of model {model.name!r}")
        rank_tokenize(adata, vocab=model.vocab, key_added=tokens_key, layer=layer, use_raw=use_raw)
    params = adata.uns.get(tokens_key, {}).get("params", {})
    sha = params.get("vocab_sha256")
    if sha is not None and sha != model.vocab.sha256:
        where = f"adata.obsm[{tokens_key!r}]"
        raise _vocab_error(where, params, model)
    tokens = np.asarray(adata.obsm[tokens_key])
    pad = model.vocab.id_of("pad")
    if n_key in adata.obs:
        lengths = adata.obs[n_key].to_numpy().astype(np.int64)
    else:
        lengths = (tokens != pad).sum(axis=1).astype(np.int64)
    if tokens.max(initial=0) >= len(model.vocab):
        msg = f"adata.obsm[{tokens_key!r}] holds token ids beyond the vocabulary of model {model.name!r}."
        raise ValueError(msg)
    return TokenSource(lengths, pad, tokens=tokens)


def get_tokens(
    adata: AnnData, model: MixGeneformer, tokens_key: str, *, layer: str | None = None, use_raw: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and lengths of every cell; tokenizes with the model's vocabulary when they are missing.

    Reads ``adata.obsm[tokens_key]``, or the whole token store named in ``adata.uns[tokens_key]["store"]``.
    """
    src = token_source(adata, model, tokens_key, layer=layer, use_raw=use_raw)
    return src.all(), src.lengths


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
