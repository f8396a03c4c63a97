"""Run by tests/model/test_pretrain.py under torchrun: tiny pre-training on 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mixgf.engine.train import _pretrain as pt
from mixgf.model import BertEncoderModel, EncoderConfig, PretrainConfig, TokenCorpus, pretrain_encoder


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    seen: list[list[int]] = []
    original = pt._Schedule.batch

    def recording(self, step):
        idx, epoch = original(self, step)
        seen.append([int(i) for i in idx])
        return idx, epoch

    pt._Schedule.batch = recording
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 30, size=40)
    tokens = np.zeros((40, 30), dtype=np.int64)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.choice(np.arange(4, 60), size=n, replace=False)
    corpus = TokenCorpus(tokens, lengths, np.zeros(40, dtype=np.int8), 0, 1, np.array([0, 1, 2, 3]), np.arange(4, 60))
    torch.manual_seed(0)
    model = BertEncoderModel(EncoderConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=32))  # fmt: skip
    cfg = PretrainConfig(steps=4, token_budget=200, max_cells=8, warmup_steps=1, log_every=100)
    model, _ = pretrain_encoder(model, corpus, cfg, out_dir=Path(out) / "ckpt", device="cpu", resume=False)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
    np.save(Path(out) / f"weights-{rank}.npy", flat)
    (Path(out) / f"seen-{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
