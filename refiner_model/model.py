"""The CausalRefiner and its two controls, top-down (read it like nanoGPT's model.py).

    idx ─ embed ─ prelude blocks ─ state s ─┬─ r passes of ONE shared block ─┬─ final norm ─ tied head ─ softcap
                                            └──────────── (loop) ────────────┘

What is unusual here:
- The loop. One Block runs r times over the state. Every pass keeps the causal mask (SDPA is_causal=True),
  so position t never sees a later token at any depth.
- refiner: each pass adds a learned time signal τ_i (one vector per pass index) to the block's input, and
  blends the block's output h into the state through a sigmoid gate, in float32:
      h = Block(s + τ_i);   g = σ(W_g h + b_g);   s ← s + g ⊙ (h − s)
  Gate choice: per channel (settings.model.gate = "channel", g ∈ (0,1)^d per token) or one scalar per token
  ("token"). Init: W_g = 0 and b_g = gate_init_bias (−1), so at step 0 every g = σ(−1) ≈ 0.27 regardless of
  the input: the update is s ← s + 0.27·(τ_i + Δ_block(s)), a damped residual step. Why this is stable: the new
  state is a convex blend of the old state and the block's proposal, so it cannot grow faster than the block's
  output, however many passes run; and a gate far from 0 and 1 gets full sigmoid gradient, so it still learns.
- reasoner (the control): the same embedding, prelude, block and loop, but the plain residual update s ← Block(s):
  no gate, no time signal. Its parameters are exactly the refiner's minus W_g, b_g and the time table.
- stack (matched FLOPs): n_prelude + r_mean distinct blocks, no loop; it ignores r.
- r comes from the caller: DepthSampler in training (deterministic in (seed, step), so a resumed run draws the
  same depths), settings.r_eval at inference. Passes before the last `backprop_window` run under no_grad.
  (With a window shorter than r the state entering the window is detached, so the prelude gets no gradient
  on that step: there is no input re-injection as in Huginn.)
- Logits only where a loss is taken: `positions` scores one token per row; the language-modelling loss is
  chunked, and each chunk's logits are recomputed in backward, so a full batch of logits never exists.
- Init std 0.02 everywhere (a tied 50k head at N(0,1) makes denormal gradients and 10x slower CPU steps);
  output projections are shrunk by sqrt(2 · effective depth) as in GPT-2.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from config import RefineryError, Settings

ARCHS = ("refiner", "reasoner", "stack")


class DepthError(RefineryError):
    """A loop depth r outside what the model supports was asked for.

    Fix: use 1 <= r <= r_limit (config.py ModelConfig.r_limit); raise r_limit if deeper passes are needed.
    """


# --------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    """RMSNorm with a learned gain, computed in float32 whatever the autocast dtype (fp16 safety)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight, self.eps).to(x.dtype)


def rope_tables(seq_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [T, head_dim/2] for rotary position embeddings."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv)  # [T, hd/2]
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (x1, x2) of x [B, H, T, hd] by the position's angle."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # [T, hd/2] broadcasts over B, H
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class Attention(nn.Module):
    """Causal multi-head attention: RoPE, RMSNorm on queries and keys, SDPA with is_causal=True."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        assert d % n_heads == 0 and (d // n_heads) % 2 == 0, "heads must split d_model into even sizes (RoPE)"
        self.n_heads, self.head_dim = n_heads, d // n_heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.q_norm, self.k_norm = RMSNorm(self.head_dim), RMSNorm(self.head_dim)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).transpose(1, 3).unbind(2)  # [B,H,T,hd]
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, hd]; the mask at every pass
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, d: int, d_mlp: int):
        super().__init__()
        self.fc = nn.Linear(d, 2 * d_mlp, bias=False)  # gate and value halves, fused
        self.proj = nn.Linear(d_mlp, d, bias=False)

    def forward(self, x):
        a, b = self.fc(x).chunk(2, dim=-1)  # [B, T, d_mlp] each
        return self.proj(F.silu(a) * b)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x)). attention=False: MLP only."""

    def __init__(self, d: int, n_heads: int, d_mlp: int, attention: bool = True):
        super().__init__()
        self.norm1 = RMSNorm(d) if attention else None
        self.attn = Attention(d, n_heads) if attention else None
        self.norm2 = RMSNorm(d)
        self.mlp = SwiGLU(d, d_mlp)

    def forward(self, x, cos, sin):
        if self.attn is not None:
            x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------- the model
class LoopedLM(nn.Module):
    """refiner | reasoner | stack, chosen by settings.model.arch. See the module docstring."""

    def __init__(self, settings: Settings, vocab_size: int | None = None):
        super().__init__()
        m, dims = settings.model, settings.dims
        assert m.arch in ARCHS, m.arch
        self.arch, self.settings = m.arch, settings
        self.vocab_size = vocab_size or m.vocab_size
        d, H, d_mlp = dims["d_model"], dims["n_heads"], dims["d_mlp"]
        self.d_model, self.n_heads, self.d_mlp = d, H, d_mlp
        self.r_eval, self.r_limit, self.window = settings.r_eval, m.r_limit, m.backprop_window
        self.softcap, self.loss_chunk = m.logit_softcap, m.loss_chunk_tokens
        self.track_stats = True  # last_stats costs two norms per pass; the benchmark turns it off

        self.wte = nn.Embedding(self.vocab_size, d)  # tied: the head is F.linear(x, wte.weight)
        self.prelude = nn.ModuleList(Block(d, H, d_mlp, m.prelude_attention) for _ in range(m.n_prelude))
        if self.arch == "stack":
            self.core = nn.ModuleList(Block(d, H, d_mlp) for _ in range(m.r_mean))  # distinct blocks
        else:
            self.core = Block(d, H, d_mlp)  # ONE block, looped
        if self.arch == "refiner":
            self.time = nn.Embedding(m.r_limit, d)  # τ_i, one learned vector per pass index
            self.gate = nn.Linear(d, d if m.gate == "channel" else 1, bias=True)
        self.norm_f = RMSNorm(d)

        head_dim = d // H
        cos, sin = rope_tables(m.seq_len, head_dim, m.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights(m.init_std, depth=m.n_prelude + m.r_mean, gate_bias=m.gate_init_bias)
        self._stats: dict[str, list[torch.Tensor]] = {}

    def _init_weights(self, std: float, depth: int, gate_bias: float) -> None:
        for name, p in self.named_parameters():  # RMSNorm gains (1-D) stay at 1
            if p.dim() >= 2 and not name.startswith("gate."):
                scale = 1.0 / math.sqrt(2 * depth) if name.endswith("proj.weight") else 1.0
                nn.init.normal_(p, mean=0.0, std=std * scale)
        if self.arch == "refiner":
            nn.init.zeros_(self.gate.weight)  # g = σ(gate_bias) for every input at step 0: see the docstring
            nn.init.constant_(self.gate.bias, gate_bias)

    # ---- the trunk: embedding, prelude, loop
    def _rope(self, T: int, device):
        if T > self.rope_cos.shape[0] or self.rope_cos.device != device:
            cos, sin = rope_tables(max(T, self.rope_cos.shape[0]), self.d_model // self.n_heads,
                                   self.settings.model.rope_base, device)
            self.rope_cos, self.rope_sin = cos, sin
        return self.rope_cos[:T], self.rope_sin[:T]

    def _check_r(self, r: int | None) -> int:
        r = self.r_eval if r is None else int(r)
        if self.arch != "stack" and not 1 <= r <= self.r_limit:
            raise DepthError(f"r = {r} is outside [1, r_limit = {self.r_limit}]")
        return r

    def embed(self, idx):
        """Token embedding then the prelude: [B, T] -> [B, T, D] float32 (the loop's initial state)."""
        assert idx.dim() == 2 and idx.dtype == torch.long, "idx must be [B, T] long"
        cos, sin = self._rope(idx.shape[1], idx.device)
        x = self.wte(idx)
        for blk in self.prelude:
            x = blk(x, cos, sin)
        return x.float(), cos, sin

    def passes(self, s, r: int, cos, sin):
        """Yield the state after each pass (refiner/reasoner: r passes of one block; stack: its blocks once).

        Passes before the last `backprop_window` run under no_grad. The state stays float32 throughout.
        """
        blocks = list(self.core) if self.arch == "stack" else [self.core] * r
        n_nograd = 0 if (self.window == 0 or self.arch == "stack") else max(len(blocks) - self.window, 0)
        grad = torch.is_grad_enabled()
        self._stats = {"gate_mean": [], "state_delta": []}
        for i, blk in enumerate(blocks):
            with torch.set_grad_enabled(grad and i >= n_nograd):
                if self.arch == "refiner":
                    h = blk(s + self.time.weight[i], cos, sin).float()  # the block's proposal [B, T, D]
                    g = torch.sigmoid(self.gate(h).float())  # [B, T, D] (channel) or [B, T, 1] (token)
                    s_new = torch.lerp(s, h, g)  # float32 gated blend s + g ⊙ (h − s), one fused op
                else:
                    s_new = blk(s, cos, sin).float()  # plain residual update (the block holds the residual)
            if self.track_stats:
                with torch.no_grad():
                    if self.arch == "refiner":
                        self._stats["gate_mean"].append(g.mean())
                    self._stats["state_delta"].append((s_new - s).norm() / s.norm().clamp_min(1e-12))
            s = s_new
            yield s

    def head(self, x):
        """Final norm, tied head, tanh soft cap: [..., D] -> [..., V] float32."""
        logits = F.linear(self.norm_f(x), self.wte.weight).float()
        if self.softcap > 0:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    # ---- forward
    def forward(self, idx, r: int | None = None, targets=None, positions=None):
        """idx [B, T] long -> (logits, loss).

        positions [B]: logits [B, V] at those positions only; loss = CE(logits, targets[B]) if targets.
        positions None, targets [B, T]: chunked LM loss over all positions (ignore_index -1), logits None.
        positions None, targets None: full logits [B, T, V] (short inputs only), loss None.
        """
        r = self._check_r(r)
        s0, cos, sin = self.embed(idx)
        s = s0
        for s in self.passes(s0, r, cos, sin):  # noqa: B007 - the last state is the one read out
            pass
        if positions is not None:
            B = idx.shape[0]
            assert positions.shape == (B,), "positions: one scored token per row, shape [B]"
            logits = self.head(s[torch.arange(B, device=idx.device), positions])  # [B, V]
            loss = None if targets is None else F.cross_entropy(logits, targets)
            return logits, loss
        if targets is not None:
            assert targets.shape == idx.shape, "LM targets must be [B, T]"
            return None, self.lm_loss(s, targets)
        return self.head(s), None

    def _chunk_loss(self, x, t):
        return F.cross_entropy(self.head(x), t, ignore_index=-1, reduction="sum")

    def lm_loss(self, s, targets):
        """Mean next-token CE over [B, T], computed loss_chunk tokens at a time; with more than one chunk,
        each chunk's logits are recomputed in backward (activation checkpointing), never all stored."""
        x, t = s.reshape(-1, s.shape[-1]), targets.reshape(-1)  # [N, D], [N]
        n, c = x.shape[0], self.loss_chunk
        total = x.new_zeros((), dtype=torch.float32)
        for i in range(0, n, c):
            if n > c and torch.is_grad_enabled():
                total = total + checkpoint(self._chunk_loss, x[i:i + c], t[i:i + c], use_reentrant=False)
            else:
                total = total + self._chunk_loss(x[i:i + c], t[i:i + c])
        return total / (t != -1).sum().clamp_min(1)

    @torch.no_grad()
    def depth_curve(self, idx, positions, r_max: int):
        """Read-out at `positions` after each pass 1..r_max: logits [r_max, B, V] (stack: [1, B, V])."""
        r_max = self._check_r(r_max)
        s, cos, sin = self.embed(idx)
        rows = torch.arange(idx.shape[0], device=idx.device)
        outs = [self.head(s_i[rows, positions]) for s_i in self.passes(s, r_max, cos, sin)]
        return torch.stack(outs[-1:] if self.arch == "stack" else outs)

    def stats_tensors(self) -> dict[str, torch.Tensor]:
        """After a forward: gate_mean and state_delta per pass as device tensors [passes] (no sync)."""
        out = {k: torch.stack(v).float() for k, v in self._stats.items() if v}
        if self.arch != "refiner":
            out.pop("gate_mean", None)
        return out

    @property
    def last_stats(self) -> dict[str, list[float]]:
        """After a forward: gate_mean per pass (refiner) and state_delta per pass (‖s_i − s_{i−1}‖ / ‖s_{i−1}‖)."""
        out = {}
        for k, v in self._stats.items():
            out[k] = torch.stack(v).float().cpu().tolist() if v else []
        if self.arch != "refiner":
            out.pop("gate_mean", None)
        return out


def build_model(settings: Settings, vocab_size: int | None = None) -> LoopedLM:
    """The model named by settings.model.arch, initialised from settings.train.seed (not the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.train.seed)
        return LoopedLM(settings, vocab_size)


# --------------------------------------------------------------------------- counting
def num_params(model: nn.Module, exclude_embedding: bool = False) -> int:
    """Unique parameters (the tied head counts once)."""
    n = sum(p.numel() for p in model.parameters())
    if exclude_embedding and hasattr(model, "wte"):
        n -= model.wte.weight.numel()
    return n


def _matmul_params(mod: nn.Module) -> int:
    return sum(m.weight.numel() for m in mod.modules() if isinstance(m, nn.Linear))


def flops_per_token(model: LoopedLM, r: int | None, grad_passes: int | None = None, seq_len: int | None = None,
                    head_tokens: float = 1.0, train: bool = True) -> float:
    """Training FLOPs per token (PaLM/nanoGPT convention): 6N for work with a backward, 2N for forward-only
    (no_grad) passes, plus attention 12·T·d per block-pass with grad (4·T·d without).

    r: loop passes (stack: ignored). grad_passes: passes with grad (None = min(r, backprop_window or r)).
    head_tokens: fraction of tokens the head is applied to (1 for LM, 1/T when one answer token is scored).
    train=False: forward-only FLOPs (inference).
    """
    T = seq_len or model.settings.model.seq_len
    d = model.d_model
    def attn(blk):
        return 2 * 2 * T * d if blk.attn is not None else 0  # QK^T and AV, forward
    mult_g, mult_ng = (6, 2) if train else (2, 2)
    fwd = sum(2 * _matmul_params(b) + attn(b) for b in model.prelude)
    total = fwd * mult_g / 2
    if model.arch == "stack":
        total += sum((2 * _matmul_params(b) + attn(b)) * mult_g / 2 for b in model.core)
    else:
        r = model._check_r(r)
        if grad_passes is None:
            grad_passes = r if model.window == 0 else min(r, model.window)
        grad_passes = min(grad_passes, r)
        per_pass = 2 * _matmul_params(model.core) + attn(model.core)
        if model.arch == "refiner":
            per_pass += 2 * model.gate.weight.numel()
        total += per_pass * (grad_passes * mult_g + (r - grad_passes) * mult_ng) / 2
    total += head_tokens * 2 * model.wte.weight.numel() * mult_g / 2
    return float(total)


# --------------------------------------------------------------------------- depth sampling
class DepthSampler:
    """Training depth r per step, deterministic in (seed, step): a resumed run draws the same sequence.

    uniform: r ~ U{r_min..r_max}; with r_hold_frac and the run's `steps`, r ~ U{r_min..r̄} for the first
    r_hold_frac of them (k-hop at tiny: learning to hop and to hold the answer through extra passes at once
    left 1 seed in 5 stuck at the copy answer; the hop first, then the hold: 9 seeds of 10 solved).
    fixed: r = r_mean.
    poisson_lognormal (Huginn): λ ~ LogNormal(log(r̄ − 1) − σ²/2, σ), r = 1 + Poisson(λ), so E[r] = r̄;
    clipped to [r_min, r_max] (r_max is its cap: set it well above r̄ or the mean drops).
    """

    def __init__(self, settings: Settings, seed: int, steps: int | None = None):
        m = settings.model
        self.kind, self.seed = m.r_sampler, int(seed)
        self.r_min, self.r_max, self.r_mean, self.sigma = m.r_min, m.r_max, m.r_mean, m.r_sigma
        self.hold_from = int(m.r_hold_frac * steps) if steps else 0

    def draw(self, step: int) -> int:
        if self.kind == "fixed":
            return self.r_mean
        rng = np.random.default_rng([self.seed, int(step), 0x5EED])
        if self.kind == "uniform":
            top = self.r_max if step >= self.hold_from else min(self.r_mean, self.r_max)
            return int(rng.integers(self.r_min, top + 1))
        lam = 0.0
        if self.r_mean > 1:
            lam = rng.lognormal(math.log(self.r_mean - 1) - self.sigma ** 2 / 2, self.sigma)
        return int(min(max(1 + rng.poisson(lam), self.r_min), self.r_max))

    def state_dict(self) -> dict:
        """Everything a checkpoint needs to redraw the same sequence (the step is stored beside it)."""
        return {"kind": self.kind, "seed": self.seed, "r_min": self.r_min, "r_max": self.r_max,
                "r_mean": self.r_mean, "sigma": self.sigma, "hold_from": self.hold_from}


# --------------------------------------------------------------------------- optimisation
def configure_optimizer(model: nn.Module, settings: Settings) -> torch.optim.AdamW:
    """Fused AdamW; weight decay on matrices and embeddings (dim >= 2), none on norms, biases or the gate bias."""
    t = settings.train
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused (CUDA and CPU): one kernel, and it reads the GradScaler's skip flag on the device, so a training step
    # needs no device-to-host sync (refiner_model/precision.py)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=True)


def lr_at(step: int, total: int, settings: Settings) -> float:
    """Linear warm-up to train.lr over warmup_steps, then cosine decay to lr·lr_final_frac at `total`."""
    t = settings.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    span = max(total - t.warmup_steps, 1)
    frac = min(max((step - t.warmup_steps) / span, 0.0), 1.0)
    return t.lr * (t.lr_final_frac + (1 - t.lr_final_frac) * 0.5 * (1 + math.cos(math.pi * frac)))

