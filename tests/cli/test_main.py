from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np

from mixgf.cli import main


def test_demo_tokenizes_embeds_and_perturbs_both_species():
    cmd = [sys.executable, "-m", "mixgf", "demo", "--max-cells", "400", "--perturb-cells", "10"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "coverage of vocabulary 'mixgf' (human genes)" in out
    assert "coverage of vocabulary 'mixgf' (mouse genes)" in out
    assert "400 cells" in out and out.count("10-nearest-neighbour cell-type agreement") == 2
    assert "in silico deletion of CD74" in out and "shift_vs_expected" in out


def test_tokenize_command(pbmc, tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    pbmc.write_h5ad(src)
    dst = tmp_path / "out.h5ad"
    assert main(["tokenize", str(src), "-o", str(dst), "--gene-id-key", "gene_id", "--backed"]) == 0
    tok = ad.read_h5ad(dst).obsm["mixgf_tokens"]
    assert tok.shape[0] == pbmc.n_obs and (tok[:, 0] > 0).all()
    assert main(["tokenize", str(src), "-o", str(dst)]) == 2
    assert "exists" in capsys.readouterr().err
    # bad input: a clear message and exit code 2, no output file
    bad = pbmc.copy()
    bad.X = bad.X.astype(np.float32) * 0.5
    bad.write_h5ad(src)
    assert main(["tokenize", str(src), "-o", str(tmp_path / "x.h5ad"), "--gene-id-key", "gene_id"]) == 2
    assert "non-integer" in capsys.readouterr().err
    assert not (tmp_path / "x.h5ad").exists()
