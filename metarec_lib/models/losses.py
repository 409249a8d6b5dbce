"""Losses whose gradients are written out by hand, so that a training step costs less.

`bpr_triple_loss` is the pairwise BPR loss of BPR and of the transfer models' matrix
factorisation: autograd would gather the three embedding rows of every triple, keep a dozen
(batch, f) intermediates and scatter their gradients back with `index_put_`; here the loss
and the per-triple gradients come out of one pass, and the backward adds them into the table
gradients (loss and gradients at batch 4,096 and 128 factors on ml-latest-small's tables:
4.2 ms instead of 7.6 ms on one CPU thread; figures in `benchmarks/README.md`).

`bpr_max` is GRU4Rec's BPR-max loss over a batch's (rows, positions, negatives) scores.
Written with autograd it is a chain of about fifteen whole-tensor passes (mask, softmax, sigmoid,
products, sums) each way, each over a (128, 20, 640) float tensor at GRU4Rec's batch: 80% of a
training step on ML-100K. Here the loss and the gradients of the scores and the positives come
out of one forward, a few rows at a time (`BPR_MAX_CHUNK` scores, so the temporaries stay in
cache): softmax and sums as single kernels, the gradient in closed form (see `bpr_max`); the
backward only scales them. A GRU4Rec step (128 windows of 20, 512 shared negatives, ML-100K,
one thread) takes about 40 ms instead of 65-90 ms.

`full_softmax_cross_entropy` is the full-softmax cross-entropy of the sequence models, fused
and chunked:

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

With `products=torch.bfloat16` the three matrix products (logits, hidden and weight
gradients) take bfloat16 inputs and accumulate in float32; the softmax, the loss and every
sum stay float32. On a CPU with bfloat16 dot products in hardware (`native_bfloat16`) they run
about twice as fast, and a SASRec step on ml-latest-small takes about a third less; the
gradients differ from float32's by about 0.5% of their largest entry, the rounding of the
inputs. The sequence models choose it by their `loss_precision` hyperparameter
(`product_dtype`): "auto" uses it where the hardware has it, so the numbers of a run depend on
the CPU's instruction set as well as on the seed.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch

# Logit elements a chunk holds: 2**19 floats (2 MiB) fit the per-core L2 cache of the
# reference CPU; 32-512 rows gave the same speed there. GPUs want large kernels: one chunk.
CHUNK_ELEMENTS = {"cpu": 2**19}
GPU_CHUNK_ELEMENTS = 2**28
# With bfloat16 products, the weight gradient's product runs once per this many logits
# (a 16 MiB buffer of bfloat16 rows): once per chunk, its rounding to bfloat16 and adding to
# the float32 gradient would cost as much as the product.
GROUP_ELEMENTS = 2**23
PRECISIONS = ("auto", "float32", "bfloat16")


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (`has_bfloat16_flag` of
    /proc/cpuinfo) and PyTorch's oneDNN uses it. Elsewhere a bfloat16 product is emulated,
    slower than float32 (or, without oneDNN's path, many times slower)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return has_bfloat16_flag(cpuinfo) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def has_bfloat16_flag(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo text lists x86's AVX512-BF16 or AMX-BF16 among the CPU flags."""
    return any(re.search(r"(?:^|\s)(?:avx512_bf16|amx_bf16)(?:\s|$)", line.split(":", 1)[1])
               for line in cpuinfo.splitlines()
               if line.startswith("flags") and ":" in line)  # fmt: skip


def product_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype of `full_softmax_cross_entropy`'s products for a model's `loss_precision`:
    "float32" -> None (the inputs' own), "bfloat16" -> bfloat16, "auto" -> bfloat16 on a CPU
    with `native_bfloat16`, else None (GPUs keep float32: one chunk there is fast already)."""
    if precision not in PRECISIONS:
        raise ValueError(f"loss_precision={precision!r}; expected one of {PRECISIONS}")
    if precision == "bfloat16" or (precision == "auto" and device.type == "cpu"
                                   and native_bfloat16()):  # fmt: skip
        return torch.bfloat16
    return None


def chunk_rows(n_items: int, device: torch.device) -> int:
    """Rows per chunk: `CHUNK_ELEMENTS` of the device type (else `GPU_CHUNK_ELEMENTS`)
    divided by the number of items, at least 1."""
    budget = CHUNK_ELEMENTS.get(device.type, GPU_CHUNK_ELEMENTS)
    return max(1, budget // max(n_items, 1))


class _FullSoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, grad_enabled, products):  # type: ignore[override]
        n, per_row = targets.shape
        total = max(n * per_row, 1)
        need_h, need_w, need_b = (grad_enabled and need for need in ctx.needs_input_grad[:3])
        d_hidden = torch.empty_like(hidden) if need_h else None
        d_weight = torch.zeros_like(weight) if need_w else None
        d_bias = torch.zeros_like(bias) if need_b else None
        if products is not None and products != hidden.dtype:
            loss = _low_precision_chunks(hidden, weight, bias, targets, products,
                                         d_hidden, d_weight, d_bias)  # fmt: skip
            ctx.save_for_backward(d_hidden, d_weight, d_bias)
            return loss / total
        loss = hidden.new_zeros(())
        step = chunk_rows(weight.shape[0], hidden.device)
        for start in range(0, n, step):
            h, t = hidden[start : start + step], targets[start : start + step]
            logits = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
            part, p = _chunk_loss_and_logit_gradient(logits, t, per_row)
            loss += part
            del logits
            p.div_(total)  # d mean loss / d logits = (per_row * softmax - one-hots) / total
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
        return *(None if g is None else g * upstream for g in ctx.saved_tensors), None, None, None


def _chunk_loss_and_logit_gradient(
    logits: torch.Tensor, t: torch.Tensor, per_row: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the chunk's losses, d (that sum) / d logits): the softmax in float32 or wider
    (`logits` may be bfloat16), the log-sum-exp from the target's probability, with the exact
    fallback where that underflows."""
    wide = torch.promote_types(logits.dtype, torch.float32)
    rows = torch.arange(len(t), device=t.device)[:, None].expand_as(t)
    picked = logits[rows, t].to(wide)  # (chunk, per_row) logits of the targets
    p = torch.softmax(logits, dim=1, dtype=wide)
    p_target = p[rows[:, 0], t[:, 0]]
    lse = picked[:, 0] - torch.log(p_target)
    tiny = p_target < torch.finfo(p.dtype).tiny
    if bool(tiny.any()):
        lse[tiny] = torch.logsumexp(logits[tiny].to(wide), dim=1)
    if per_row > 1:
        p.mul_(per_row)
    ones = torch.ones(t.numel(), dtype=p.dtype, device=p.device)
    p.index_put_((rows.reshape(-1), t.reshape(-1)), -ones, accumulate=True)
    return per_row * lse.sum() - picked.sum(), p


def _low_precision_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    products: torch.dtype,
    d_hidden: torch.Tensor | None,
    d_weight: torch.Tensor | None,
    d_bias: torch.Tensor | None,
) -> torch.Tensor:
    """The summed loss; fills the gradients of the mean loss in place. The three matrix
    products take `products` (bfloat16) inputs and accumulate in float32 inside the kernel;
    the softmax, the loss and the sums are float32. The weight gradient's product runs once
    per group of `GROUP_ELEMENTS` logits, over the group's logit gradients kept in bfloat16."""
    n, per_row = targets.shape
    n_items = weight.shape[0]
    step = chunk_rows(n_items, hidden.device)
    group = max(step, GROUP_ELEMENTS // max(n_items, 1)) // step * step  # whole chunks
    h_low, w_low = hidden.detach().to(products), weight.detach().to(products)
    need_p = d_hidden is not None or d_weight is not None
    p_low = hidden.new_empty((min(group, n), n_items), dtype=products) if need_p else None
    loss = hidden.new_zeros(())
    for first in range(0, n, group):
        last = min(n, first + group)
        for start in range(first, last, step):
            end = min(last, start + step)
            logits = h_low[start:end] @ w_low.T
            if bias is not None:
                logits = torch.add(bias, logits)  # float32
            part, p = _chunk_loss_and_logit_gradient(logits, targets[start:end], per_row)
            loss += part
            del logits
            if d_bias is not None:
                d_bias += p.sum(0)
            if p_low is not None:
                rows = p_low[start - first : end - first]
                rows.copy_(p)
                if d_hidden is not None:
                    d_hidden[start:end] = rows @ w_low
        if d_weight is not None:
            d_weight += p_low[: last - first].T @ h_low[first:last]
    total = max(n * per_row, 1)
    for g in (d_hidden, d_weight, d_bias):
        if g is not None:
            g.div_(total)
    return loss


def full_softmax_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    products: torch.dtype | None = None,
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
    return _FullSoftmaxCrossEntropy.apply(hidden, weight, bias, targets, torch.is_grad_enabled(),
                                          products)  # fmt: skip


class _BPRTripleLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, users, items, bias, top, u, i, j, weight, reg, frozen_u, frozen_i, grad):  # type: ignore[override]
        n = max(len(u), 1)
        p, qi, qj = users.index_select(0, u), items.index_select(0, i), items.index_select(0, j)
        bi, bj = bias.index_select(0, i), bias.index_select(0, j)
        d = qi - qj
        pw = p if top is None else p @ top.T
        diff = (pw * d).sum(1) + bi - bj
        penalty = (p * p).sum(1) + (qi * qi).sum(1) + (qj * qj).sum(1) + bi * bi + bj * bj
        per_triple = torch.nn.functional.softplus(-diff) + reg * penalty  # -log sigmoid(diff)
        if weight is not None:
            per_triple = per_triple * weight
        loss = per_triple.sum() / n
        ctx.shapes = (users.shape, items.shape, bias.shape)
        need = [grad and flag for flag in ctx.needs_input_grad[:4]]
        if not any(need):
            ctx.save_for_backward(None, None, None, None, None, None, None, None, None)
            return loss
        # Per-triple gradients now (batch-sized); the table-sized ones are assembled in the
        # backward, so that they are fresh tensors autograd can take as .grad without a copy.
        s = torch.sigmoid(-diff).mul_(-1.0 / n)  # d loss / d diff
        c: torch.Tensor | float = 2.0 * reg / n  # d loss / d (a squared norm)
        s_col, c_col = s[:, None], c
        if weight is not None:
            s, c = s * weight, c * weight
            s_col, c_col = s[:, None], c[:, None]
        g_pw = s_col * d  # d loss / d pw
        g_p = g_qi = g_qj = g_bi = g_bj = g_top = None
        if need[0]:
            g_p = c_col * p
            g_p += g_pw if top is None else g_pw @ top
            if frozen_u is not None:
                g_p.masked_fill_(frozen_u.index_select(0, u)[:, None], 0.0)
        if need[1]:
            g_qi = torch.addcmul(c_col * qi, s_col, pw)
            g_qj = torch.addcmul(c_col * qj, s_col, pw, value=-1.0)
            if frozen_i is not None:
                g_qi.masked_fill_(frozen_i.index_select(0, i)[:, None], 0.0)
                g_qj.masked_fill_(frozen_i.index_select(0, j)[:, None], 0.0)
        if need[2]:
            g_bi, g_bj = s + c * bi, c * bj - s
        if need[3]:
            g_top = g_pw.T @ p  # pw = p @ top.T
        ctx.save_for_backward(u, i, j, g_p, g_qi, g_qj, g_bi, g_bj, g_top)
        return loss

    @staticmethod
    def backward(ctx, upstream):  # type: ignore[override]
        u, i, j, g_p, g_qi, g_qj, g_bi, g_bj, g_top = ctx.saved_tensors
        users_shape, items_shape, bias_shape = ctx.shapes
        g_users = g_items = g_bias = None
        if g_p is not None:
            g_users = g_p.new_zeros(users_shape).index_add_(0, u, g_p * upstream)
        if g_qi is not None:
            g_items = g_qi.new_zeros(items_shape).index_add_(0, i, g_qi * upstream)
            g_items.index_add_(0, j, g_qj * upstream)
        if g_bi is not None:
            g_bias = g_bi.new_zeros(bias_shape).index_add_(0, i, g_bi * upstream)
            g_bias.index_add_(0, j, g_bj * upstream)
        g_top = None if g_top is None else g_top * upstream
        return g_users, g_items, g_bias, g_top, *([None] * 8)


def bpr_triple_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    bias: torch.Tensor,
    u: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    *,
    reg: float,
    top: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    frozen_users: torch.Tensor | None = None,
    frozen_items: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the triples (u, i, j) of w * (-log sigmoid(x_ui - x_uj) + reg * (|p_u|^2 +
    |q_i|^2 + |q_j|^2 + b_i^2 + b_j^2)), with x_ui = (top p_u) . q_i + b_i.

    users (n_users, f), items (n_items, f), bias (n_items,): the tables; u, i, j: int64 row
    indices of equal length; top (f, f) or None (the identity); weight (len(u),) or None (1);
    frozen_users / frozen_items: bool (n_users,) / (n_items,) rows that get no gradient (they
    still count in the loss). Equals the same expression written with autograd up to float
    rounding; the per-triple gradients are computed with the loss and added into dense table
    gradients (`index_add_`) by the backward; under `torch.no_grad` only the loss is computed.
    """
    return _BPRTripleLoss.apply(users, items, bias, top, u, i, j, weight, float(reg),
                                frozen_users, frozen_items, torch.is_grad_enabled())  # fmt: skip


# Scores a chunk of `_BPRMax` holds: its few (rows, L, K) temporaries then stay in the CPU's
# cache, where whole-batch ones (6.5 MB each at GRU4Rec's batch) went to memory.
BPR_MAX_CHUNK = 2**16


class _BPRMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, positive, ok, valid, reg, grad):  # type: ignore[override]
        need_s, need_p = (grad and flag for flag in ctx.needs_input_grad[:2])
        d_scores = torch.empty_like(scores) if need_s else None
        d_positive = torch.empty_like(positive) if need_p else None
        count = valid.sum()
        scale = 1.0 / max(int(count), 1)  # d loss / d term at a valid position
        n, length, k = scores.shape
        budget = BPR_MAX_CHUNK if scores.device.type == "cpu" else GPU_CHUNK_ELEMENTS
        step = max(1, budget // max(length * k, 1))
        total = scores.new_zeros(())
        for start in range(0, n, step):
            rows = slice(start, start + step)
            total += _bpr_max_chunk(scores[rows], positive[rows], ok[rows], valid[rows], reg,
                                    scale, None if d_scores is None else d_scores[rows],
                                    None if d_positive is None else d_positive[rows])  # fmt: skip
        ctx.save_for_backward(d_scores, d_positive)
        return total / count

    @staticmethod
    def backward(ctx, upstream):  # type: ignore[override]
        d_scores, d_positive = ctx.saved_tensors
        return (None if d_scores is None else d_scores * upstream,
                None if d_positive is None else d_positive * upstream,
                None, None, None, None)  # fmt: skip


def _bpr_max_chunk(
    scores: torch.Tensor,
    positive: torch.Tensor,
    ok: torch.Tensor,
    valid: torch.Tensor,
    reg: float,
    scale: float,
    d_scores: torch.Tensor | None,
    d_positive: torch.Tensor | None,
) -> torch.Tensor:
    """The summed terms of the chunk's valid positions; writes the gradients of the mean
    (`scale` = 1 / valid positions of the batch) into `d_scores` and `d_positive` if given."""
    w = torch.softmax(scores.masked_fill(~ok, -1e9), dim=2)
    if not bool(ok.any(2).all()):  # a position without any negative: weight 0 everywhere
        w.mul_(ok.any(2, keepdim=True))
    sig = torch.sigmoid(positive[..., None] - scores)
    gain = torch.linalg.vecdot(w, sig)
    sq = scores.square()
    w_sq = torch.linalg.vecdot(w, sq)
    terms = reg * w_sq - torch.log(gain + 1e-24)
    if d_scores is None and d_positive is None:
        return terms[valid].sum()
    g = valid.to(scores.dtype) * scale  # d loss / d term
    inv = g / (gain + 1e-24)  # d loss / d gain = -inv
    sig.square_()
    w_sig2 = torch.linalg.vecdot(w, sig)  # sum_j w_j sigmoid_j^2
    if d_positive is not None:  # d gain / d positive = sum_j w_j sigmoid_j (1 - sigmoid_j)
        torch.mul(inv, w_sig2 - gain, out=d_positive)
    if d_scores is not None:
        # d term / d s_i = w_i ((gain - sigmoid_i^2) / (gain + eps)
        #                       + reg (s_i^2 + 2 s_i - sum_j w_j s_j^2))
        sq.add_(scores, alpha=2.0).sub_(w_sq[..., None]).mul_((reg * g)[..., None])
        sq.addcmul_(sig, inv[..., None], value=-1.0).add_((gain * inv)[..., None])
        torch.mul(sq, w, out=d_scores)
    return terms[valid].sum()


def bpr_max(
    scores: torch.Tensor,
    positive: torch.Tensor,
    ok: torch.Tensor,
    valid: torch.Tensor,
    reg: float,
) -> torch.Tensor:
    """Mean over the `valid` positions of BPR-max (Hidasi & Karatzoglou 2018) with score
    regularisation: -log sum_j w_j sigmoid(r - s_j) + reg * sum_j w_j s_j^2, where w is the
    softmax of the negatives' scores s over the entries `ok` marks (0 everywhere at a position
    without any).

    scores (n, L, K), positive (n, L): the target's score r at each position; ok (n, L, K) and
    valid (n, L) booleans. With w the weights, sigma_j = sigmoid(r - s_j) and g = the gain
    sum_j w_j sigma_j, the gradients are d term / d s_i = w_i ((g - sigma_i^2) / g + reg (s_i^2
    + 2 s_i - sum_j w_j s_j^2)) and d term / d r = -(g - sum_j w_j sigma_j^2) / g (g plus 1e-24,
    as in the loss); entries not `ok` get none. Equals the expression written with autograd up
    to float rounding (`tests/test_losses.py`)."""
    return _BPRMax.apply(scores, positive, ok, valid, float(reg), torch.is_grad_enabled())
