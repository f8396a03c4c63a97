"""Pre-training objectives: masked-gene modelling, SimCSE and the cross-species alignment (pure torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce", "mask_tokens"]


def mask_tokens(
    ids: torch.Tensor,
    maskable: torch.Tensor,
    *,
    mask_id: int,
    random_ids: torch.Tensor,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose ``mask_prob`` of the maskable positions; 80 % ``<mask>``, 10 % random gene, 10 % kept.

    Parameters
    ----------
    ids
        Token ids (``[B, L]`` padded or ``[T]`` packed).
    maskable
        Bool, same shape: positions that may be masked (gene tokens; not padding or special tokens).
    mask_id
        Id of ``<mask>``.
    random_ids
        1-D tensor of the token ids a random replacement is drawn from (the gene tokens).
    mask_prob
        Fraction of maskable positions to predict.
    generator
        Random generator (on the same device as ``ids``) for reproducible masking.

    Returns
    -------
    inputs
        The corrupted ids.
    target
        Bool, same shape: positions whose original token the model must predict.

    Examples
    --------
    >>> import torch
    >>> from mixgf.model import mask_tokens
    >>> ids = torch.arange(4, 24).reshape(2, 10)
    >>> maskable = torch.ones_like(ids, dtype=torch.bool)
    >>> maskable[:, 0] = False  # e.g. a <cls> token
    >>> generator = torch.Generator().manual_seed(0)
    >>> inputs, target = mask_tokens(
    ...     ids, maskable, mask_id=1, random_ids=torch.arange(4, 30), mask_prob=0.3, generator=generator
    ... )
    >>> inputs.shape, bool(target.any()), bool(target[:, 0].any())
    (torch.Size([2, 10]), True, False)
    >>> bool((inputs[~target] == ids[~target]).all())  # only target positions can change
    True
    """
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    target = (u < mask_prob) & maskable
    # guarantee at least one prediction per batch when anything is maskable
    if not bool(target.any()) and bool(maskable.any()):
        flat = target.view(-1)
        flat[torch.nonzero(maskable.reshape(-1), as_tuple=False)[0, 0]] = True
    v = torch.rand(ids.shape, generator=generator, device=ids.device)
    inputs = ids.clone()
    inputs[target & (v < 0.8)] = mask_id
    rnd = target & (v >= 0.8) & (v < 0.9)
    n_rnd = int(rnd.sum())
    if n_rnd:
        pick = torch.randint(0, random_ids.numel(), (n_rnd,), generator=generator, device=ids.device)
        inputs[rnd] = random_ids.to(ids.device)[pick].to(ids.dtype)
    return inputs, target


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` with in-batch negatives (cosine / temperature).

    Row ``i`` of ``a`` must match row ``i`` of ``b`` against every other row; the loss is the mean of the two
    directions. With ``a``, ``b`` two dropout views of the same cells this is SimCSE; with a cell and its
    ortholog projection it is the cross-species alignment.

    Parameters
    ----------
    a, b
        ``[B, H]`` paired embeddings.
    temperature
        Softmax temperature of the cosine similarities.

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Examples
    --------
    >>> import torch
    >>> from mixgf.model import info_nce
    >>> a = torch.eye(4)
    >>> matched = info_nce(a, a, temperature=0.1)
    >>> shuffled = info_nce(a, a.roll(1, dims=0), temperature=0.1)
    >>> bool(matched < 0.01), bool(shuffled > matched)
    (True, True)
    """
    a = F.normalize(a.to(torch.float32), dim=-1)
    b = F.normalize(b.to(torch.float32), dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
