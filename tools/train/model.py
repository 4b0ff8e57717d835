"""SpikingBrain-style hybrid model (model_type gla_swa), exactly as in DESIGN.md section 2.

Training form: chunked GLA (every exponent <= 0) + windowed softmax attention.
`reference_logits` is a plain token-by-token implementation (used in float64 to unit-check the chunked one).
Parameter names equal the official Hugging Face tensor names.
"""
import math
from dataclasses import dataclass, asdict, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 4096
    hidden_size: int = 256
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    intermediate_size: int = 1024
    sliding_window: int = 256
    rope_theta: float = 1e6
    norm_eps: float = 1e-6
    gk_rank: int = 16
    gate_logit_normalizer: int = 16
    attn_layers: list = field(default_factory=list)

    def __post_init__(self):
        if not self.attn_layers:
            self.attn_layers = list(range(1, self.num_hidden_layers, 2))

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    def to_dict(self):
        return asdict(self)


def rms_norm(x, w, eps):
    xf = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def chunk_gla(q, k, v, g, chunk=16, state=None):
    """q: [B,Hkv,G,T,d] (already scaled), k,v,g: [B,Hkv,T,d]. Returns o [B,Hkv,G,T,d], final state [B,Hkv,d,d].
    Within a chunk b_i = sum_{s<=i} g_s; o_i = (q_i*e^{b_i}) S0 + sum_{j<=i} (sum_c q_i[c] k_j[c] e^{b_i[c]-b_j[c]}) v_j;
    S_C = diag(e^{b_C}) S0 + sum_j (k_j*e^{b_C-b_j})^T v_j. All exponents are <= 0."""
    B, Hk, G, T, d = q.shape
    pad = (-T) % chunk
    if pad:
        q = F.pad(q, (0, 0, 0, pad))
        k = F.pad(k, (0, 0, 0, pad))
        v = F.pad(v, (0, 0, 0, pad))
        g = F.pad(g, (0, 0, 0, pad))
    N = (T + pad) // chunk
    q = q.reshape(B, Hk, G, N, chunk, d)
    k = k.reshape(B, Hk, N, chunk, d)
    v = v.reshape(B, Hk, N, chunk, d)
    b = g.reshape(B, Hk, N, chunk, d).cumsum(-2)
    mask = torch.tril(torch.ones(chunk, chunk, dtype=torch.bool, device=q.device))
    diff = b.unsqueeze(-2) - b.unsqueeze(-3)                       # [B,Hk,N,i,j,d] = b_i - b_j
    decay = diff.masked_fill(~mask[:, :, None], float("-inf")).exp()
    A = torch.einsum("bhgnijc,bhnjc->bhgnij", q.unsqueeze(-2) * decay.unsqueeze(2), k)
    o = torch.einsum("bhgnij,bhnjd->bhgnid", A, v)
    b_last = b[:, :, :, -1:, :]                                    # [B,Hk,N,1,d]
    U = torch.einsum("bhnjc,bhnje->bhnce", k * (b_last - b).exp(), v)  # [B,Hk,N,d,d]
    a = b_last.squeeze(-2).exp()                                   # [B,Hk,N,d]
    S = torch.zeros(B, Hk, d, d, dtype=q.dtype, device=q.device) if state is None else state
    prev = []
    for n in range(N):
        prev.append(S)
        S = a[:, :, n, :, None] * S + U[:, :, n]
    Sp = torch.stack(prev, 2)                                      # [B,Hk,N,d,d] state before chunk n
    o = o + torch.einsum("bhgnic,bhnce->bhgnie", q * b.exp().unsqueeze(2), Sp)
    o = o.reshape(B, Hk, G, N * chunk, d)[:, :, :, :T]
    return o, S


class GLA(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        D, H, Hk, d = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.c = c
        self.q_proj = nn.Linear(D, H * d)
        self.k_proj = nn.Linear(D, Hk * d)
        self.v_proj = nn.Linear(D, Hk * d)
        self.gk_proj = nn.Sequential(nn.Linear(D, c.gk_rank, bias=False), nn.Linear(c.gk_rank, Hk * d))
        self.g_norm = RMSNorm(d, c.norm_eps)
        self.o_proj = nn.Linear(H * d, D, bias=False)

    def forward(self, u, chunk=16):
        c = self.c
        B, T, _ = u.shape
        H, Hk, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        G = H // Hk
        q = F.relu(self.q_proj(u))
        k = F.relu(self.k_proj(u))
        v = self.v_proj(u)
        g = F.logsigmoid(self.gk_proj(u)) / c.gate_logit_normalizer
        dt = torch.float64 if u.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=u.device.type, enabled=False):
            q = q.to(dt).view(B, T, Hk, G, d).permute(0, 2, 3, 1, 4) * d ** -0.5
            k = k.to(dt).view(B, T, Hk, d).transpose(1, 2)
            v = v.to(dt).view(B, T, Hk, d).transpose(1, 2)
            g = g.to(dt).view(B, T, Hk, d).transpose(1, 2)
            o, _ = chunk_gla(q, k, v, g, chunk)
            o = o.permute(0, 3, 1, 2, 4).reshape(B, T, H, d)       # head h = kv*G + j
            o = self.g_norm(o).reshape(B, T, H * d)
        return self.o_proj(o)


def rope_cos_sin(T, d, theta, device, dtype, offset=0):
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
    pos = torch.arange(offset, offset + T, dtype=torch.float64, device=device)
    f = pos[:, None] * inv[None]
    emb = torch.cat([f, f], -1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


_SDPA = [True]


class SWA(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        D, H, Hk, d = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.c = c
        self.q_proj = nn.Linear(D, H * d)
        self.k_proj = nn.Linear(D, Hk * d)
        self.v_proj = nn.Linear(D, Hk * d)
        self.o_proj = nn.Linear(H * d, D, bias=False)

    def forward(self, u, chunk=None):
        c = self.c
        B, T, _ = u.shape
        H, Hk, d, W = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.sliding_window
        q = self.q_proj(u).view(B, T, H, d).transpose(1, 2)
        k = self.k_proj(u).view(B, T, Hk, d).transpose(1, 2)
        v = self.v_proj(u).view(B, T, Hk, d).transpose(1, 2)
        if q.dtype in (torch.bfloat16, torch.float16):   # rotate in float32 under autocast
            q, k = q.float(), k.float()
        cos, sin = rope_cos_sin(T, d, c.rope_theta, u.device, q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // Hk, dim=1)
        v = v.repeat_interleave(H // Hk, dim=1)
        i = torch.arange(T, device=u.device)
        diff = i[:, None] - i[None, :]
        allowed = (diff >= 0) & (diff <= W)                        # keys p-W..p inclusive
        o = None
        if _SDPA[0] and hasattr(F, "scaled_dot_product_attention") and u.device.type == "cuda":
            try:
                o = F.scaled_dot_product_attention(q, k, v.to(k.dtype), attn_mask=allowed)
            except RuntimeError as e:   # fall back to the plain form below
                print("scaled_dot_product_attention failed, using plain attention:", e, flush=True)
                _SDPA[0] = False
        if o is None:
            s = (q @ k.transpose(-1, -2)) * d ** -0.5
            s = s.masked_fill(~allowed, float("-inf"))
            o = s.softmax(-1) @ v
        o = o.transpose(1, 2).reshape(B, T, H * d)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, u):
        return self.down_proj(F.silu(self.gate_proj(u)) * self.up_proj(u))


class Block(nn.Module):
    def __init__(self, c: Config, i):
        super().__init__()
        self.attn_norm = RMSNorm(c.hidden_size, c.norm_eps)
        self.attn = SWA(c) if i in c.attn_layers else GLA(c)
        self.mlp_norm = RMSNorm(c.hidden_size, c.norm_eps)
        self.mlp = MLP(c)

    def forward(self, h, chunk=16):
        h = h + self.attn(self.attn_norm(h), chunk)
        return h + self.mlp(self.mlp_norm(h))


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([Block(c, i) for i in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.norm_eps)


class GLAswaForCausalLM(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.model = Inner(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self, seed=None):
        c = self.config
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("gk_proj.1.bias"):
                nn.init.uniform_(p, 0.0, 4.0)          # slow decays at start: log-decay in [-0.043, -0.0011]
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                nn.init.normal_(p, 0, std / math.sqrt(2 * c.num_hidden_layers))
            else:
                nn.init.normal_(p, 0, std)

    def forward(self, ids, chunk=16):
        h = self.model.embeddings(ids)
        for layer in self.model.layers:
            h = layer(h, chunk)
        h = self.model.norm(h)
        return self.lm_head(h)


@torch.no_grad()
def reference_logits(model: GLAswaForCausalLM, ids):
    """Token-by-token reference for one sequence (ids: 1-D LongTensor), in the parameters' dtype."""
    c = model.config
    sd = {k: v for k, v in model.state_dict().items()}
    dt = sd["lm_head.weight"].dtype
    H, Hk, d, W = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.sliding_window
    G = H // Hk
    T = len(ids)
    h = sd["model.embeddings.weight"][ids]                         # [T,D]

    def lin(x, name, bias=True):
        y = x @ sd[name + ".weight"].T
        if bias and (name + ".bias") in sd:
            y = y + sd[name + ".bias"]
        return y

    def norm(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.norm_eps) * w

    inv = c.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    for li in range(c.num_hidden_layers):
        p = f"model.layers.{li}."
        u = norm(h, sd[p + "attn_norm.weight"])
        out = torch.zeros(T, H * d, dtype=dt)
        if li in c.attn_layers:
            q = lin(u, p + "attn.q_proj").view(T, H, d)
            k = lin(u, p + "attn.k_proj").view(T, Hk, d)
            v = lin(u, p + "attn.v_proj").view(T, Hk, d)
            for t in range(T):
                ang = (t * inv).to(dt)
                cs, sn = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
                qr = q[t] * cs + rotate_half(q[t]) * sn
                lo = max(0, t - W)
                ks = []
                for j in range(lo, t + 1):
                    a = (j * inv).to(dt)
                    cj, sj = torch.cat([a.cos(), a.cos()]), torch.cat([a.sin(), a.sin()])
                    ks.append(k[j] * cj + rotate_half(k[j]) * sj)
                K = torch.stack(ks)                                # [n,Hk,d]
                V = v[lo:t + 1]
                for hh in range(H):
                    kv = hh // G
                    s = (K[:, kv] @ qr[hh]) * d ** -0.5
                    out[t, hh * d:(hh + 1) * d] = s.softmax(0) @ V[:, kv]
        else:
            q = torch.relu(lin(u, p + "attn.q_proj")).view(T, H, d)
            k = torch.relu(lin(u, p + "attn.k_proj")).view(T, Hk, d)
            v = lin(u, p + "attn.v_proj").view(T, Hk, d)
            g1 = u @ sd[p + "attn.gk_proj.0.weight"].T
            g = F.logsigmoid(g1 @ sd[p + "attn.gk_proj.1.weight"].T + sd[p + "attn.gk_proj.1.bias"])
            g = (g / c.gate_logit_normalizer).view(T, Hk, d)
            S = torch.zeros(Hk, d, d, dtype=dt)
            for t in range(T):
                S = g[t].exp()[:, :, None] * S + k[t][:, :, None] * v[t][:, None, :]
                for hh in range(H):
                    o = (q[t, hh] * d ** -0.5) @ S[hh // G]
                    out[t, hh * d:(hh + 1) * d] = norm(o, sd[p + "attn.g_norm.weight"])
        h = h + out @ sd[p + "attn.o_proj.weight"].T
        u = norm(h, sd[p + "mlp_norm.weight"])
        m = F.silu(u @ sd[p + "mlp.gate_proj.weight"].T) * (u @ sd[p + "mlp.up_proj.weight"].T)
        h = h + m @ sd[p + "mlp.down_proj.weight"].T
    h = norm(h, sd["model.norm.weight"])
    return h @ sd["lm_head.weight"].T
