"""Run by tests/tl/test_distributed.py under ``torchrun`` (2 CPU processes, gloo); not a test module itself.

Usage: ``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/tl/_dist_worker.py OUT_DIR``.
Every rank writes what it ends up holding into ``OUT_DIR`` (``*_rank<r>.*``) for the test to compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import torch.distributed as dist

import mixgf as mgf
from mixgf.engine import _distributed

N_CELLS = 101  # odd: the two shares differ, no tail may be dropped
MAX_LEN = 512
PERTURB = {
    "genes": ["LTB", "CD3D", "LYZ"],
    "goal": {"key": "cell_type", "source": "CD4 T cells", "target": "CD14+ Monocytes"},
    "max_cells": 25,
    "n_controls": 5,
    "store_embeddings": True,
}


def tokenized() -> ad.AnnData:
    a = mgf.datasets.pbmc3k()[:N_CELLS].copy()
    mgf.pp.rank_tokenize(a, gene_id_key="gene_id", max_len=MAX_LEN)
    return a


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mgf.settings.progress_bar = False
    mgf.settings.verbosity = "warning"

    # embedding, tokens in obsm
    a = tokenized()
    mgf.tl.embed(a)
    np.save(out / f"embed_rank{rank}.npy", a.obsm["X_mixgf"])
    params = {"embed": dict(a.uns["mixgf"]["params"]), "world": world}

    # embedding, tokens streamed from a token store written by rank 0
    if rank == 0:
        b = mgf.datasets.pbmc3k()[:N_CELLS].copy()
        mgf.pp.rank_tokenize(b, gene_id_key="gene_id", max_len=MAX_LEN, store=out / "pbmc.tokens.zarr")
        b.write_h5ad(out / "stored.h5ad")
    dist.barrier()
    b = ad.read_h5ad(out / "stored.h5ad")
    mgf.tl.embed(b)
    np.save(out / f"embed_store_rank{rank}.npy", b.obsm["X_mixgf"])

    # perturbation: model work shared, statistics on every rank
    mgf.tl.perturb(a, **PERTURB)
    entry = a.uns["mixgf_perturb"]
    entry["results"].to_csv(out / f"perturb_rank{rank}.csv", float_format="%.17g")
    np.save(out / f"shift_rank{rank}.npy", a.obsm["mixgf_perturb_shift"].to_numpy())
    np.save(out / f"original_rank{rank}.npy", a.obsm["mixgf_perturb_original"])
    np.save(out / f"perturbed_rank{rank}.npy", entry["perturbed_embeddings"])
    params["perturb"] = {k: v for k, v in entry["params"].items() if not isinstance(v, list)}

    # the gather itself: uneven and empty shares, rows out of order, several rounds of one row each
    _distributed.GATHER_BLOCK_BYTES = 16
    mine = np.array([6, 0, 3]) if rank == 0 else np.array([1, 2, 4, 5])
    rows = np.stack([mine * 10.0, mine * 10.0 + 1], axis=1)
    uneven = _distributed.all_gather_rows(rows, mine, 8)
    idx = np.array([0, 5, 2]) if rank == 0 else np.zeros(0, dtype=np.int64)
    one_empty = _distributed.all_gather_rows(idx.astype(np.float32)[:, None] + 0.5, idx, 6)
    total = _distributed.all_reduce_scalar(rank + 1, "sum")
    np.savez(out / f"gather_rank{rank}.npz", uneven=uneven, one_empty=one_empty, total=total)
    (out / f"params_rank{rank}.json").write_text(json.dumps(params, default=str))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
