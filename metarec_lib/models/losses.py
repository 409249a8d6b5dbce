"""The full-softmax cross-entropy of the sequence models, fused and chunked so it costs less.

`F.cross_entropy(h @ W.T + b, t)` materialises the (rows, items) logits, keeps the
log-probabilities for its backward and allocates two more (rows, items) buffers there; on
ml-latest-small's 9,742 items a SASRec batch is 12,800 x 9,742 floats (500 MB) a buffer, so
the step is bound by memory traffic, not by its matrix products. The gradient of the mean loss
with respect to the logits is known in closed form, (softmax - one-hot) / rows, so
`full_softmax_cross_entropy` walks the rows in chunks small enough for the CPU's cache
(`CHUNK_ELEMENTS`): logits, softmax, loss and logit gradient of a chunk, then at once its share
of the gradients of hidden, weight and bias. No (rows, items) buffer outlives its chunk, and
the backward only scales the saved gradients by the upstream one.
Same loss and gradients up to float rounding; at SASRec's batch shape on 9,742 items a step
takes 0.8 s instead of 2.3 s (unfused) and 1.5 s (fused, one chunk) on one CPU thread
(`benchmarks/bench_softmax_loss.py`).
"""

from __future__ import annotations

import torch

# Logit elements a chunk holds: 2**19 floats (2 MiB) fit the per-core L2 cache of the
# reference CPU; 32-512 rows gave the same speed there. GPUs want large kernels: one chunk.
CHUNK_ELEMENTS = {"cpu": 2**19}
GPU_CHUNK_ELEMENTS = 2**28


def chunk_rows(n_items: int, device: torch.device) -> int:
    """Rows per chunk: `CHUNK_ELEMENTS` of the device type (else `GPU_CHUNK_ELEMENTS`)
    divided by the number of items, at least 1."""
    budget = CHUNK_ELEMENTS.get(device.type, GPU_CHUNK_ELEMENTS)
    return max(1, budget // max(n_items, 1))


class _FullSoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, grad_enabled):  # type: ignore[override]
        n, per_row = targets.shape
        total = max(n * per_row, 1)
        need_h, need_w, need_b = (grad_enabled and need for need in ctx.needs_input_grad[:3])
        d_hidden = torch.empty_like(hidden) if need_h else None
        d_weight = torch.zeros_like(weight) if need_w else None
        d_bias = torch.zeros_like(bias) if need_b else None
        loss = hidden.new_zeros(())
        step = chunk_rows(weight.shape[0], hidden.device)
        for start in range(0, n, step):
            h, t = hidden[start : start + step], targets[start : start + step]
            logits = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
            rows = torch.arange(len(t), device=t.device)[:, None].expand_as(t)
            picked = logits[rows, t]  # (chunk, per_row) logits of the targets
            p = torch.softmax(logits, dim=1)
            # log-sum-exp from the target's probability; exact fallback where it underflows
            p_target = p[rows[:, 0], t[:, 0]]
            lse = picked[:, 0] - torch.log(p_target)
            tiny = p_target < torch.finfo(p.dtype).tiny
            if bool(tiny.any()):
                lse[tiny] = torch.logsumexp(logits[tiny], dim=1)
            loss += per_row * lse.sum() - picked.sum()
            del logits
            # d loss / d logits = (per_row * softmax - the row's one-hots) / (n * per_row)
            if per_row > 1:
                p.mul_(per_row)
            ones = torch.ones(t.numel(), dtype=p.dtype, device=p.device)
            p.index_put_((rows.reshape(-1), t.reshape(-1)), -ones, accumulate=True)
            p.div_(total)
            if d_hidden is not None:
                torch.mm(p, weight, out=d_hidden[start : start + step])
            if d_weight is not None:
                d_weight.addmm_(p.T, h)
            if d_bias is not None:
                d_bias += p.sum(0)
        ctx.save_for_backward(d_hidden, d_weight, d_bias)
        return loss / total

    @staticmethod
    def backward(ctx, upstream):  # type: ignore[override]
        return *(None if g is None else g * upstream for g in ctx.saved_tensors), None, None


def full_softmax_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over rows (and targets) of -log softmax(hidden @ weight.T + bias)[target].

    hidden (n, d); weight (n_items, d); bias (n_items,) or None; targets (n,) or (n, T)
    0-based item indices (T targets a row: Caser's). Equals `F.cross_entropy` (T = 1) and the
    mean of `-F.log_softmax(...).gather(1, targets)` (T > 1) up to float rounding. The
    gradients are computed with the loss (see the module docstring), so calling it where no
    input requires a gradient (or under `torch.no_grad`) costs only the loss.
    """
    if targets.dim() == 1:
        targets = targets[:, None]
    return _FullSoftmaxCrossEntropy.apply(hidden, weight, bias, targets, torch.is_grad_enabled())
