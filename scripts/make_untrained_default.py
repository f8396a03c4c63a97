"""Write the placeholder default model: random weights, clearly labelled UNTRAINED.

It exists so that the API runs end to end before a trained default ships. Its embeddings carry no biology.
Run from the repository root: ``python scripts/make_untrained_default.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mixgf._pretrained import DEFAULT_MODEL_DIR, MixGeneformer
from mixgf.genes import Vocabulary
from mixgf.model import BertEncoderModel, EncoderConfig

SEED = 0


def main() -> None:
    vocab = Vocabulary.load("mixgf")
    torch.manual_seed(SEED)
    config = EncoderConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        hidden_act="silu",
        max_position_embeddings=vocab.rules.max_len,
        pad_token_id=vocab.id_of("pad"),
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    encoder = BertEncoderModel(config).eval()
    meta = {
        "name": "mixgf-untrained-4L128",
        "trained": False,
        "description": (
            "UNTRAINED placeholder: random weights (torch.manual_seed(0), normal init with std 0.02) in the "
            "Mix-Geneformer architecture (SiLU, post-LayerNorm BERT) at a small size. It lets the API run end to "
            "end; its embeddings carry no biological signal."
        ),
        "architecture": "BERT encoder, 4 layers, hidden 128, 4 heads, FFN 256, SiLU, 2,048 positions",
        "vocabulary": vocab.name,
        "vocab_sha256": vocab.sha256,
        "seed": SEED,
    }
    MixGeneformer(encoder, vocab, meta["name"], meta).save(Path(DEFAULT_MODEL_DIR), overwrite=True)
    print(f"wrote {DEFAULT_MODEL_DIR}")


if __name__ == "__main__":
    main()
