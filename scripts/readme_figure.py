"""Draw the README picture: a joint UMAP of human PBMCs and mouse pancreas cells with the bundled default model.

Run from the repository root: ``python scripts/readme_figure.py`` (writes docs/_static/umap_human_mouse.png).
"""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import mixgf as mgf

mgf.settings.verbosity = "warning"
mgf.settings.progress_bar = False
human = mgf.datasets.pbmc3k()[:1000].copy()
mouse = mgf.datasets.baron_mouse_pancreas()
mgf.pp.rank_tokenize(human, gene_id_key="gene_id", max_len=256)
mgf.pp.rank_tokenize(mouse, max_len=256)
for a in (human, mouse):
    mgf.tl.embed(a)
both = ad.concat({"human": human, "mouse": mouse}, label="species", join="outer")
mgf.tl.umap(both)
fig = mgf.pl.umap(both, color=["species", "cell_type"], return_fig=True, show=False, wspace=0.45)
fig.set_size_inches(11, 4.2)
fig.savefig("docs/_static/umap_human_mouse.png", dpi=90, bbox_inches="tight")
