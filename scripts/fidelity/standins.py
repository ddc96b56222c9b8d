"""PyTorch stand-ins for the fused kernels that the reference DRT imports.

The reference (ant-research/long-context-modeling, model/DRT.py and model/llama.py)
imports flash-attn (attention, fused RMSNorm, fused cross-entropy, padding helpers),
xformers' fused SwiGLU and its own Triton GCA kernel (ltriton/gca.py). `install()`
puts modules of the same names into `sys.modules` before the reference is imported, each
computing the kernel's math in plain PyTorch:

* `flash_attn.flash_attn_func`: softmax(q k^T * scale + ALiBi) v with flash-attn's masking
  semantics (query i of Tq aligned to key i + Tk - Tq; `causal`; `window_size=(left,
  right)`, -1 = unbounded; ALiBi bias -slope * |i + Tk - Tq - j|), GQA by repeating kv
  heads, the softmax in fp32 and the probabilities rounded to v's dtype before the value
  product (as the kernel does). Causal windowed attention runs banded (query blocks
  against their own and the previous keys), so a 16K sequence never forms a T x T matrix.
* `flash_attn.ops.rms_norm.RMSNorm` / `rms_norm`: x * rsqrt(mean(x^2) + eps) * weight in
  fp32, returned in x's dtype; parameter `weight` only, default eps 1e-5 (flash-attn's).
* `flash_attn.losses.cross_entropy.CrossEntropyLoss`: mean cross-entropy in fp32 over the
  targets that are not `ignore_index`.
* `xformers.ops.swiglu_op.swiglu`: (silu(x W1^T + b1) * (x W2^T + b2)) W3^T + b3.
* `ltriton.gca.attention` / `gca_kv_cache`: per retrieved chunk, softmax(q k^T * scale) v
  in fp32 with the probabilities rounded to v's dtype, then the weighted sum over the K
  chunks with the retrieval weights, in fp32, returned in q's dtype. `sm_n` is ignored: in
  the Triton kernel the initial l = sm_n is multiplied by alpha = exp2(-inf) = 0 at the
  first block, so it has no effect there either (shared/seed-report.md, 9.1).

`flash_attn_with_kvcache` and `flash_attn.bert_padding` serve only the reference's
inference cache and padding masks, which the harness does not use; they raise.
Nothing here runs under autocast: each stand-in picks its dtypes as its kernel does.
"""

import math
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F


def _no_autocast(t):
    return torch.autocast(device_type=t.device.type, enabled=False)


# ---------------------------------------------------------------------------- attention


def _repeat_kv(x, hq):
    """(B, T, Hk, D) -> (B, T, Hq, D): kv head h serves query heads h*G .. h*G+G-1."""
    hk = x.shape[2]
    return x if hk == hq else x.repeat_interleave(hq // hk, dim=2)


def _alibi(slopes, b, h, device):
    """Slopes as (B, H) fp32."""
    s = slopes.to(device=device, dtype=torch.float32)
    return s.expand(b, h) if s.dim() == 1 else s


def _attend(q, k, v, dist, visible, slopes, scale):
    """q (B, ..., Tq, H, D), k/v (B, ..., Tk, H, D), `dist` (query - key position) and
    `visible` broadcasting against the scores (B, ..., H, Tq, Tk): the masked softmax
    attention (B, ..., Tq, H, D), in q's dtype."""
    with _no_autocast(q):
        s = torch.einsum("b...ihd,b...jhd->b...hij", q.float(), k.float()) * scale
        if slopes is not None:
            m = slopes  # (B, H)
            m = m.view(m.shape[0], *([1] * (s.dim() - 4)), m.shape[1], 1, 1)
            s = s - m * dist.abs().float()
        s = s.masked_fill(~visible, float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0).to(v.dtype)
        o = torch.einsum("b...hij,b...jhd->b...ihd", p.float(), v.float())
    return o.to(q.dtype)


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """flash-attn 2's `flash_attn_func` (no dropout): q (B, Tq, Hq, D), k/v (B, Tk, Hk, D)."""
    assert dropout_p == 0.0 and not return_attn_probs, "stand-in: no dropout, no probs"
    b, tq, hq, d = q.shape
    tk = k.shape[1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    left, right = window_size
    if causal:
        right = 0
    k, v = _repeat_kv(k, hq), _repeat_kv(v, hq)
    slopes = None if alibi_slopes is None else _alibi(alibi_slopes, b, hq, q.device)
    if causal and left >= 0 and tq == tk and tq > 2 * max(left, 1):
        return _banded(q, k, v, left, slopes, scale)
    qi = torch.arange(tq, device=q.device) + (tk - tq)
    kj = torch.arange(tk, device=q.device)
    dist = qi[:, None] - kj[None, :]  # query position - key position
    visible = torch.ones_like(dist, dtype=torch.bool)
    if left >= 0:
        visible &= dist <= left
    if right >= 0:
        visible &= -dist <= right
    return _attend(q, k, v, dist, visible, slopes, scale)


def _banded(q, k, v, window, slopes, scale):
    """Causal attention over keys t - window ..= t, in query blocks of `window` rows (at
    least 1) that see their own block and the one before: O(T * window) memory."""
    b, t, h, d = q.shape
    bs = max(window, 1)
    nb = -(-t // bs)
    pad = nb * bs - t

    def blocks(x, before):
        # (B, T, H, D) -> (B, nb, before + bs, H, D): block n holds positions
        # n*bs - before .. n*bs + bs - 1 (zeros outside 0..T-1).
        x = F.pad(x, (0, 0, 0, 0, before, pad))
        return x.unfold(1, before + bs, bs).permute(0, 1, 4, 2, 3)

    qb = blocks(q, 0)
    kb, vb = blocks(k, bs), blocks(v, bs)
    i = torch.arange(bs, device=q.device)
    j = torch.arange(2 * bs, device=q.device)
    dist = (i[:, None] + bs) - j[None, :]  # query - key position within a block pair
    n = torch.arange(nb, device=q.device)
    key_pos = n[:, None, None] * bs - bs + j[None, None, :]  # (nb, 1, 2bs)
    visible = (dist >= 0) & (dist <= window) & (key_pos >= 0)  # (nb, bs, 2bs)
    visible = visible[:, None]  # (nb, 1, bs, 2bs), against scores (B, nb, H, bs, 2bs)
    o = _attend(qb, kb, vb, dist, visible, slopes, scale)  # (B, nb, bs, H, D)
    return o.reshape(b, nb * bs, h, d)[:, :t]


def flash_attn_with_kvcache(*args, **kwargs):
    raise NotImplementedError("stand-in: the harness runs no inference cache")


# ---------------------------------------------------------------------------- RMSNorm


def rms_norm(x, weight, epsilon):
    with _no_autocast(x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + epsilon)
        return (y * weight.float()).to(x.dtype)


class RMSNorm(nn.Module):
    """flash_attn.ops.rms_norm.RMSNorm: a `weight` of ones, no bias."""

    def __init__(self, hidden_size, eps=1e-5, dropout_p=0.0, device=None, dtype=None):
        super().__init__()
        assert dropout_p == 0.0
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        assert residual is None and not prenorm
        return rms_norm(x, self.weight, self.eps)


# ---------------------------------------------------------------------------- loss


class CrossEntropyLoss(nn.Module):
    """flash_attn.losses.cross_entropy.CrossEntropyLoss (no smoothing, no process group)."""

    def __init__(self, ignore_index=-100, reduction="mean", label_smoothing=0.0, **kwargs):
        super().__init__()
        assert reduction in ("mean", "none") and label_smoothing == 0.0
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, input, target):
        with _no_autocast(input):
            return F.cross_entropy(
                input.float(), target, ignore_index=self.ignore_index, reduction=self.reduction
            )


# ---------------------------------------------------------------------------- SwiGLU


def swiglu(x, w1, b1, w2, b2, w3, b3, *, op=None):
    """xformers.ops.swiglu_op.swiglu."""
    return F.linear(F.silu(F.linear(x, w1, b1)) * F.linear(x, w2, b2), w3, b3)


# ---------------------------------------------------------------------------- GCA


def gca_attention(q, k, v, weights, sm_scale, sm_n=0.0):
    """ltriton.gca.attention: q (B, Hq, Q, D), k/v (B, Hkv, K, S, D), weights (B, K)."""
    b, hq, nq, d = q.shape
    hkv = k.shape[1]
    with _no_autocast(q):
        qg = q.float().view(b, hkv, hq // hkv, nq, d)
        s = torch.einsum("bhgqd,bhksd->bhgkqs", qg, k.float()) * sm_scale
        p = torch.softmax(s, dim=-1).to(v.dtype).float()
        o = torch.einsum("bhgkqs,bhksd->bhgkqd", p, v.float())
        o = torch.einsum("bhgkqd,bk->bhgqd", o, weights.float())
    return o.reshape(b, hq, nq, d).to(q.dtype)


# ---------------------------------------------------------------------------- install


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    m.__file__ = __file__
    sys.modules[name] = m
    return m


def _unused(name):
    def f(*args, **kwargs):
        raise NotImplementedError(f"stand-in: {name} is not used by the harness")

    return f


def install(gca="standin"):
    """Puts the stand-in modules into sys.modules. gca: "standin" (the PyTorch GCA above)
    or "triton" (leave `ltriton.gca` to the reference's own Triton kernel)."""
    fa = _module(
        "flash_attn",
        flash_attn_func=flash_attn_func,
        flash_attn_with_kvcache=flash_attn_with_kvcache,
    )
    fa.__path__ = []
    fa.bert_padding = _module(
        "flash_attn.bert_padding",
        index_first_axis=_unused("index_first_axis"),
        pad_input=_unused("pad_input"),
        unpad_input=_unused("unpad_input"),
    )
    fa.ops = _module("flash_attn.ops")
    fa.ops.__path__ = []
    fa.ops.rms_norm = _module("flash_attn.ops.rms_norm", RMSNorm=RMSNorm, rms_norm=rms_norm)
    fa.losses = _module("flash_attn.losses")
    fa.losses.__path__ = []
    fa.losses.cross_entropy = _module(
        "flash_attn.losses.cross_entropy", CrossEntropyLoss=CrossEntropyLoss
    )
    xf = _module("xformers")
    xf.__path__ = []
    xf.ops = _module("xformers.ops")
    xf.ops.__path__ = []
    xf.ops.swiglu_op = _module("xformers.ops.swiglu_op", swiglu=swiglu)
    if gca == "standin":
        lt = _module("ltriton")
        lt.__path__ = []
        lt.gca = _module("ltriton.gca", attention=gca_attention, gca_kv_cache=gca_attention)


def self_test():
    """The banded attention against the dense masked softmax, and GCA against a
    per-chunk loop, on small random inputs (fp32, CPU)."""
    g = torch.Generator().manual_seed(0)
    for t, w in [(37, 5), (64, 16), (50, 49)]:
        q, k, v = (torch.randn(2, t, 4, 8, generator=g) for _ in range(3))
        slopes = torch.tensor([2.0 ** (-8 * (i + 1) / 4) for i in range(4)])
        a = flash_attn_func(q, k, v, causal=True, window_size=(w, 0), alibi_slopes=slopes)
        i = torch.arange(t)
        dist = i[:, None] - i[None, :]
        s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(8)
        s = s - slopes[None, :, None, None] * dist.float()
        s = s.masked_fill(~((dist >= 0) & (dist <= w)), float("-inf"))
        ref = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v)
        err = (a - ref).abs().max().item()
        assert err < 1e-5, f"banded attention T={t} W={w}: max error {err}"
    q = torch.randn(3, 4, 6, 8, generator=g)
    k, v = (torch.randn(3, 4, 5, 7, 8, generator=g) for _ in range(2))
    w = torch.rand(3, 5, generator=g)
    a = gca_attention(q, k, v, w, 0.3)
    ref = sum(
        w[:, c, None, None, None]
        * torch.softmax(q @ k[:, :, c].transpose(-1, -2) * 0.3, -1)
        @ v[:, :, c]
        for c in range(5)
    )
    err = (a - ref).abs().max().item()
    assert err < 1e-5, f"GCA stand-in: max error {err}"
