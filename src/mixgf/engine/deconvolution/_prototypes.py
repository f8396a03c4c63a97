"""`Prototypes`: cell-type prototypes (expected counts per cell, genes x types) saved as a model directory.

A directory holds ``prototypes.safetensors`` (arrays), ``genes.tsv``, ``types.tsv``, ``batches.tsv`` (when fitted
with batches), ``prototypes.json`` (species and parameters) and ``manifest.json`` (the size and sha256 of every
other file, checked on load). No pickle.
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

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Prototypes"]

FORMAT_NAME = "mixgf-prototypes"
FORMAT_VERSION = 1
_ARRAYS = "prototypes.safetensors"
_META = "prototypes.json"


def _write_tsv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    return rows[0], rows[1:]


@dataclass
class Prototypes:
    """Cell-type prototypes of one species: expected counts per cell of each type and gene, NB dispersions.

    Made by :func:`mixgf.tl.prototypes`, read back from an AnnData with :func:`mixgf.get.prototypes`, used by
    :func:`mixgf.tl.deconvolve`; :meth:`save` and :meth:`load` store them as a model directory.

    Attributes
    ----------
    means
        Expected counts per cell (genes x types), batch-corrected to the average batch.
    dispersion
        NB inverse dispersion per gene (``inf``: Poisson).
    genes
        Gene names (the reference's var names).
    gene_ids
        Unversioned Ensembl ID per gene (``""`` where the name maps to none).
    types
        Cell-type names, in the column order of :attr:`means`.
    species
        ``"human"`` or ``"mouse"``.
    n_cells
        Reference cells per type.
    cell_size
        Mean total counts of a reference cell of each type.
    batch_effects
        Log batch effects (batches x genes), or `None`.
    batches
        Batch names (rows of :attr:`batch_effects`).
    params
        How they were fitted (groupby, batch key, layer, version, ...).

    Examples
    --------
    >>> import tempfile
    >>> import mixgf as mgf
    >>> adata = mgf.datasets.pbmc3k()
    >>> adata = adata[adata.obs["cell_type"].notna()].copy()
    >>> mgf.tl.prototypes(adata, groupby="cell_type", min_cells=10)
    >>> protos = mgf.get.prototypes(adata)
    >>> protos.types[:2], protos.species
    (['B cells', 'CD14+ Monocytes'], 'human')
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = protos.save(d + "/pbmc_prototypes")
    ...     back = mgf.engine.deconvolution.Prototypes.load(d + "/pbmc_prototypes")
    >>> bool((back.means == protos.means).all()), back.types == protos.types
    (True, True)
    """

    means: np.ndarray
    dispersion: np.ndarray
    genes: list[str]
    gene_ids: list[str]
    types: list[str]
    species: str
    n_cells: np.ndarray
    cell_size: np.ndarray
    batch_effects: np.ndarray | None = None
    batches: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.means = np.asarray(self.means, dtype=np.float64)
        self.dispersion = np.asarray(self.dispersion, dtype=np.float64)
        self.n_cells = np.asarray(self.n_cells, dtype=np.int64)
        self.cell_size = np.asarray(self.cell_size, dtype=np.float64)
        self.genes, self.gene_ids, self.types = (
            list(map(str, self.genes)),
            list(map(str, self.gene_ids)),
            list(map(str, self.types)),
        )
        G, K = self.means.shape
        if len(self.genes) != G or len(self.gene_ids) != G or self.dispersion.shape != (G,):
            msg = f"Prototypes: {G} genes in `means`, but {len(self.genes)} names / {len(self.gene_ids)} IDs."
            raise ValueError(msg)
        if len(self.types) != K or self.n_cells.shape != (K,) or self.cell_size.shape != (K,):
            msg = f"Prototypes: {K} types in `means`, but {len(self.types)} type names."
            raise ValueError(msg)

    def __repr__(self) -> str:
        batches = f", {len(self.batches)} batches" if self.batches else ""
        return f"Prototypes({len(self.types)} {self.species} cell types x {len(self.genes):,} genes{batches})"

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return len(self.genes)

    def to_df(self) -> pd.DataFrame:
        """The means as a DataFrame (genes x types).

        Returns
        -------
        pandas.DataFrame
            Expected counts per cell; index = gene names, columns = types.
        """
        import pandas as pd

        return pd.DataFrame(self.means, index=pd.Index(self.genes, name="gene"), columns=self.types)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the prototypes as a model directory (safetensors, TSV, JSON, sha256 manifest).

        Parameters
        ----------
        path
            Destination directory.
        overwrite
            Replace an existing prototypes directory.

        Returns
        -------
        pathlib.Path
            The directory.
        """
        from safetensors.numpy import save_file

        with model_dir_writer(
            path, fmt=FORMAT_NAME, version=FORMAT_VERSION, what="mixgf prototypes", overwrite=overwrite
        ) as tmp:
            arrays = {"means": self.means, "dispersion": self.dispersion, "n_cells": self.n_cells,
                      "cell_size": self.cell_size}  # fmt: skip
            if self.batch_effects is not None:
                arrays["batch_effects"] = np.asarray(self.batch_effects, dtype=np.float64)
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / _ARRAYS))
            _write_tsv(tmp / "genes.tsv", ["gene", "gene_id"], [[g, i] for g, i in zip(self.genes, self.gene_ids)])
            _write_tsv(tmp / "types.tsv", ["type"], [[t] for t in self.types])
            if self.batches:
                _write_tsv(tmp / "batches.tsv", ["batch"], [[b] for b in self.batches])
            meta = {"species": self.species, "params": self.params}
            (tmp / _META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Prototypes:
        """Read a prototypes directory written by :meth:`save`, checking every file against the manifest.

        Parameters
        ----------
        path
            The directory.

        Returns
        -------
        mixgf.engine.deconvolution.Prototypes
            The prototypes.
        """
        from safetensors.numpy import load_file

        path = Path(path)
        verify_model_dir(path, fmt=FORMAT_NAME, version=FORMAT_VERSION, what="mixgf prototypes")
        arrays = load_file(str(path / _ARRAYS))
        _, genes = _read_tsv(path / "genes.tsv")
        _, types = _read_tsv(path / "types.tsv")
        batches = [r[0] for r in _read_tsv(path / "batches.tsv")[1]] if (path / "batches.tsv").is_file() else []
        meta = json.loads((path / _META).read_text(encoding="utf-8"))
        return cls(
            means=arrays["means"],
            dispersion=arrays["dispersion"],
            genes=[r[0] for r in genes],
            gene_ids=[r[1] if len(r) > 1 else "" for r in genes],
            types=[r[0] for r in types],
            species=meta["species"],
            n_cells=arrays["n_cells"],
            cell_size=arrays["cell_size"],
            batch_effects=arrays.get("batch_effects"),
            batches=batches,
            params=meta.get("params", {}),
        )
