"""`GeneEmbeddingModel`: gene embeddings learnt from co-expression graphs, saved as a model directory.

A directory holds ``weights.safetensors`` (the network's weights), ``embeddings.safetensors`` (per dataset the
gene embeddings and the held-out edges and non-edges), ``genes.tsv`` (dataset, gene, key, per row),
``config.json`` (datasets, groups, species, cells, training parameters and history) and ``manifest.json`` (size
and sha256 of every other file, checked on load). No pickle; loading needs no torch.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._utils._files import model_dir_writer, verify_model_dir

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "GeneEmbeddingModel"]

FORMAT_NAME = "mixgf-gene-embedding"
FORMAT_VERSION = 1
_WEIGHTS = "weights.safetensors"
_ARRAYS = "embeddings.safetensors"
_GENES = "genes.tsv"
_CONFIG = "config.json"


@dataclass
class GeneEmbeddingModel:
    """Gene embeddings of several datasets in one space, from MuSe-GNN's multi-graph transformer.

    Made by :func:`mixgf.tl.train_gene_embedding`; :func:`mixgf.tl.gene_embedding` writes a dataset's embedding
    into its AnnData; :meth:`save` and :meth:`load` store it as a model directory.

    Attributes
    ----------
    datasets
        Dataset names.
    groups
        Group (modality / tissue) of each dataset; datasets of one group share layers.
    species
        Species of each dataset.
    genes
        Per dataset the gene names (var names of its graph genes), in embedding row order.
    keys
        Per dataset the cross-dataset key of each gene (human Ensembl ID; mouse genes keyed by their one-to-one
        human ortholog; ``"<species>:<name>"`` for genes without one).
    embeddings
        Per dataset the genes x dims embedding (float32).
    n_cells
        Cells of each dataset (the width of its first layer).
    heldout
        Per dataset ``(edges, non_edges)``: gene-index pairs hidden from training.
    weights
        The network's weights as numpy arrays (empty when not kept).
    params
        Architecture, training parameters, loss history and versions.

    Examples
    --------
    >>> import tempfile
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()
    >>> mgf.tl.gene_graph(adata, n_top_genes=100)
    >>> model = mgf.tl.train_gene_embedding({"pbmc": adata}, epochs=2, progress=False)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = model.save(d + "/genes")
    ...     back = mgf.engine.genegraph.GeneEmbeddingModel.load(d + "/genes")
    >>> back
    GeneEmbeddingModel(1 datasets (human), 32-d gene embeddings)
    >>> back.to_df().iloc[:, :4].columns.tolist()
    ['dataset', 'group', 'species', 'gene']
    """

    datasets: list[str]
    groups: list[str]
    species: list[str]
    genes: list[list[str]]
    keys: list[list[str]]
    embeddings: list[np.ndarray]
    n_cells: list[int]
    heldout: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.datasets = [str(d) for d in self.datasets]
        n = len(self.datasets)
        lists = {
            "groups": self.groups,
            "species": self.species,
            "genes": self.genes,
            "keys": self.keys,
            "embeddings": self.embeddings,
            "n_cells": self.n_cells,
        }
        bad = {k: len(v) for k, v in lists.items() if len(v) != n}
        if bad:
            msg = f"GeneEmbeddingModel: {n} datasets, but {bad} entries."
            raise ValueError(msg)
        if len(set(self.datasets)) != n:
            msg = f"GeneEmbeddingModel: dataset names must be unique, got {self.datasets}."
            raise ValueError(msg)
        self.embeddings = [np.asarray(e, dtype=np.float32) for e in self.embeddings]
        for d, e, g, k in zip(self.datasets, self.embeddings, self.genes, self.keys, strict=True):
            if e.shape[0] != len(g) or len(k) != len(g):
                msg = f"GeneEmbeddingModel: dataset {d!r} has {e.shape[0]} rows, {len(g)} genes, {len(k)} keys."
                raise ValueError(msg)

    def __repr__(self) -> str:
        sp = ", ".join(sorted(set(self.species)))
        dim = self.embeddings[0].shape[1] if self.embeddings else 0
        return f"GeneEmbeddingModel({len(self.datasets)} datasets ({sp}), {dim}-d gene embeddings)"

    def index(self, dataset: str) -> int:
        """Position of a dataset by name (a clear error naming the datasets otherwise)."""
        if dataset not in self.datasets:
            msg = f"dataset {dataset!r} is not in the model; its datasets are {self.datasets}."
            raise KeyError(msg)
        return self.datasets.index(dataset)

    def to_df(self) -> pd.DataFrame:
        """All embeddings stacked, one row per (dataset, gene).

        Columns ``dataset``, ``group``, ``species``, ``gene``, ``key``, then the embedding dimensions ``0 .. d-1``.

        Returns
        -------
        pandas.DataFrame
            The long table.
        """
        import pandas as pd

        parts = []
        for i, d in enumerate(self.datasets):
            df = pd.DataFrame(self.embeddings[i])
            df.insert(0, "key", self.keys[i])
            df.insert(0, "gene", self.genes[i])
            df.insert(0, "species", self.species[i])
            df.insert(0, "group", self.groups[i])
            df.insert(0, "dataset", d)
            parts.append(df)
        return pd.concat(parts, ignore_index=True)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model directory (safetensors, TSV, JSON, sha256 manifest).

        Parameters
        ----------
        path
            Destination directory.
        overwrite
            Replace an existing gene-embedding directory.

        Returns
        -------
        pathlib.Path
            The directory.
        """
        from safetensors.numpy import save_file

        with model_dir_writer(
            path, fmt=FORMAT_NAME, version=FORMAT_VERSION, what="mixgf gene-embedding", overwrite=overwrite
        ) as tmp:
            arrays = {f"embedding/{i}": e for i, e in enumerate(self.embeddings)}
            for i, (edges, non) in enumerate(self.heldout):
                arrays[f"heldout_edges/{i}"] = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
                arrays[f"heldout_non_edges/{i}"] = np.asarray(non, dtype=np.int64).reshape(-1, 2)
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / _ARRAYS))
            save_file({k: np.ascontiguousarray(v) for k, v in self.weights.items()}, str(tmp / _WEIGHTS))
            with (tmp / _GENES).open("w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh, delimiter="\t", lineterminator="\n")
                w.writerow(["dataset", "gene", "key"])
                for d, genes, keys in zip(self.datasets, self.genes, self.keys, strict=True):
                    w.writerows([d, g, k] for g, k in zip(genes, keys, strict=True))
            config = {
                "datasets": self.datasets,
                "groups": self.groups,
                "species": self.species,
                "n_cells": [int(n) for n in self.n_cells],
                "params": self.params,
            }
            text = json.dumps(config, indent=2, sort_keys=True, default=str) + "\n"
            (tmp / _CONFIG).write_text(text, encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> GeneEmbeddingModel:
        """Read a directory written by :meth:`save`, checking every file against the manifest.

        Parameters
        ----------
        path
            The directory.

        Returns
        -------
        mixgf.engine.genegraph.GeneEmbeddingModel
            The model.
        """
        from safetensors.numpy import load_file

        path = Path(path)
        verify_model_dir(
            path,
            fmt=FORMAT_NAME,
            version=FORMAT_VERSION,
            what="mixgf gene-embedding",
            required=(_WEIGHTS, _ARRAYS, _GENES, _CONFIG),
        )
        config = json.loads((path / _CONFIG).read_text(encoding="utf-8"))
        arrays = load_file(str(path / _ARRAYS))
        weights = load_file(str(path / _WEIGHTS))
        datasets = config["datasets"]
        genes: dict[str, list[str]] = {d: [] for d in datasets}
        keys: dict[str, list[str]] = {d: [] for d in datasets}
        with (path / _GENES).open(newline="", encoding="utf-8") as fh:
            rows = csv.reader(fh, delimiter="\t")
            next(rows)
            for d, g, k in rows:
                genes[d].append(g)
                keys[d].append(k)
        n = len(datasets)
        heldout = [
            (arrays[f"heldout_edges/{i}"], arrays[f"heldout_non_edges/{i}"])
            for i in range(n)
            if f"heldout_edges/{i}" in arrays
        ]
        return cls(
            datasets=datasets,
            groups=config["groups"],
            species=config["species"],
            genes=[genes[d] for d in datasets],
            keys=[keys[d] for d in datasets],
            embeddings=[arrays[f"embedding/{i}"] for i in range(n)],
            n_cells=config["n_cells"],
            heldout=heldout,
            weights=weights,
            params=config.get("params", {}),
        )
