"""Crosscheck fixture for the SpikingBrain 2.0 float64 reference (test/helpers/reference-spikingbrain2.ts).

Builds a tiny random `SSESWAMoBAForCausalLM` (model_type sse_swa_moba) with the OFFICIAL Hugging Face
modeling code of BICLab/SpikingBrain2.0 (spb2/modeling_sse_swa_moba.py, spb2/sse_swa.py,
spb2/moba_attn.py, spb2/attn.py, spb2/configuration_sse_swa_moba.py) and MoBA's official naive
reference (MoBA/moba/moba_naive.py, `moba_attn_varlen_naive`), stores it as a float32 safetensors
checkpoint, runs it in float64 and writes the logits of every position, one-shot and through the
official cache (a prefill, then one token at a time), to test/fixtures/spikingbrain2-crosscheck/: one
model with the released configs' options (`released-options/`), one with the other options the parser
accepts (`other-options/`).

The official code is read from a checkout (or a bare git mirror) of the official repository, given as
the first argument, and imported from a temporary copy outside this repository; nothing of it is
written here:

    python tools/spikingbrain2_crosscheck.py PATH/TO/SpikingBrain2.0

Needs torch, transformers (>= 5), safetensors, numpy, einops. CPU only.

The official layers call GPU kernels (flash-linear-attention's Triton ops, flash-attn, MoBA's
flash-attn path). They are replaced, in the temporary copy only, by the stand-ins below; everything
else (the layer code that projects, routes, sorts tokens per partition, merges, caches) runs as
published:

  fla.ops.gated_delta_rule.{chunk,fused_recurrent}_gated_delta_rule
      → transformers' `torch_recurrent_gated_delta_rule` (models/qwen3_5, the torch fallback of the same
        fla kernel, l2norm eps 1e-6, scale dk^-1/2; it computes in float32), called once per varlen
        segment of `cu_seqlens` with that segment's initial state, as the fla kernels treat segments.
  fla.ops.sse.prepare_sample_relpos_global_index_flat
      → the official fla_dev file fla/ops/sse/index.py itself (pure torch; its `tensor_cache` decorator
        made the identity).
  fla.modules.RMSNorm → torch.nn.functional.rms_norm (x·rsqrt(mean(x²)+eps)·w), with fla's
        (x, residual, prenorm) signature: prenorm returns (norm(x + residual), x + residual).
  fla.modules.RotaryEmbedding → fla's own cos/sin construction (inv_freq = base^(−2i/d) in float32,
        positions seqlen_offset… in float32) applied rotate-half (non-interleaved), as fla's
        `rotary_embedding_ref`.
  fla.modules.GatedMLP → down(silu(gate(x)) · up(x)) (fla's swiglu), the same parameter names.
  fla.models.utils.Cache → the official fla_dev fla/models/utils.py (`Cache`), with one correction for
        the decode logits: the seen-token count (every layer's RoPE offset) grows after the last layer
        of a step, not after layer 0 (see `CountAfterLastLayer` in main()).
  flash_attn.flash_attn_func / flash_attn_varlen_func → softmax attention with an explicit mask:
        causal aligned bottom-right (query i of Tq sees keys ≤ Tk − Tq + i), window_size (l, 0) keeps
        keys ≥ that position − l, GQA by repeating kv heads, scale d^-1/2.
  moba.moba_attn_varlen → MoBA's official naive reference `moba_attn_varlen_naive` (computes its gate
        and attention in float32).

The official code targets transformers 4.57.1; with transformers 5 one class attribute is restated in the
new format (`_tied_weights_keys` as the mapping lm_head.weight → model.embeddings.weight, the same tie),
and fla's cache layer class is made instantiable (transformers 5 added an abstract `get_max_length`,
which nothing here calls).
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "spikingbrain2-crosscheck")

# A tiny shape that exercises every point of docs/models/spikingbrain2.md: hybrid SSE-GDN + SWA layers
# (0, 2, 4), MoBA layers (1, 3), one full-attention layer (5); MoBA chunks of 8 with top-3 (own chunk +
# 2 earlier), so a 40-token prompt really drops chunks from position 24 on; a window of 6 < 40; SSE and
# hybrid-SWA heads (4) differ from the MoBA/full heads (6), GQA 2 kv heads everywhere; qkv biases on
# (the SSE projections have none whatever the flag); tied embeddings as the released checkpoints.
CONFIG = dict(
    architectures=["SSESWAMoBAForCausalLM"],
    model_type="sse_swa_moba",
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=6,
    head_dim=8,
    num_heads=4,
    num_v_heads=4,
    expand_v=1,
    intermediate_size=48,
    hidden_ratio=4,
    hidden_act="swish",
    norm_eps=1e-6,
    num_sparse_partition=4,
    num_writer=2,
    num_reader=2,
    linear_attn_type="gdn",
    sse_implementation="varlen",
    sse_qk_relu=False,
    use_output_gate=False,
    use_short_conv=False,
    allow_neg_eigval=False,
    conv_size=4,
    attn_mode="chunk",
    swa_dropout=0.5,
    aux_loss_coef=0.001,
    attn=dict(layers=[1, 3, 5], full_layers=[5], num_heads=6, num_kv_heads=2, qk_norm=True, qkv_bias=True,
              rope_theta=10000, window_size=6, moba_chunk_size=8, moba_topk=3),
    max_position_embeddings=4096,
    rope_scaling=None,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    fuse_norm=True,
    fuse_swiglu=True,
)

# The options the released configs leave at one value, flipped where the parser accepts them: relu q/k
# (`sse_qk_relu`), β·2 (`allow_neg_eigval`), no qk-norm, no biases, untied lm_head, top-1 of 3
# partitions, no GQA in the MoBA/full layers; MoBA chunks of 6 (40 tokens end in a partial chunk) with
# top-2; a window of 4; the full layer first.
OTHER_CONFIG = dict(
    CONFIG,
    vocab_size=48,
    hidden_size=24,
    num_hidden_layers=5,
    head_dim=6,
    num_heads=2,
    num_v_heads=2,
    intermediate_size=40,
    num_sparse_partition=3,
    num_writer=1,
    num_reader=1,
    sse_qk_relu=True,
    allow_neg_eigval=True,
    attn=dict(layers=[0, 3], full_layers=[0], num_heads=2, num_kv_heads=2, qk_norm=False, qkv_bias=False,
              rope_theta=500000, window_size=4, moba_chunk_size=6, moba_topk=2),
    norm_eps=1e-5,
    tie_word_embeddings=False,
)

PROMPT_TOKENS = 28
DECODE_TOKENS = 12
OFFICIAL_FILES = [
    "spb2/__init__.py", "spb2/attn.py", "spb2/configuration_sse_swa_moba.py", "spb2/modeling_sse_swa_moba.py",
    "spb2/moba_attn.py", "spb2/sse.py", "spb2/sse_swa.py", "MoBA/moba/moba_naive.py",
    "flash-linear-attention_dev/fla/ops/sse/index.py", "flash-linear-attention_dev/fla/models/utils.py",
]


def official_text(source: str, path: str) -> str:
    """A file of the official repository: from a checkout, or `git show HEAD:path` in a (bare) mirror."""
    if os.path.isfile(os.path.join(source, path)):
        with open(os.path.join(source, path)) as f:
            return f.read()
    return subprocess.run(["git", "--git-dir", source if not os.path.isdir(os.path.join(source, ".git")) else os.path.join(source, ".git"),
                           "show", f"HEAD:{path}"], check=True, capture_output=True, text=True).stdout


def official_commit(source: str) -> str:
    git_dir = os.path.join(source, ".git") if os.path.isdir(os.path.join(source, ".git")) else source
    return subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


# ---- stand-ins for the GPU kernels (see the module docstring) ----------------------------------------

STANDINS = {
    "fla/__init__.py": "",
    "fla/utils.py": "def tensor_cache(fn):\n    return fn\n",
    "fla/ops/__init__.py": "",
    "fla/ops/utils/__init__.py": "",
    "fla/ops/utils/index.py": """
        def prepare_lens_from_mask(mask):
            raise NotImplementedError('padding masks are not used by the crosscheck')
    """,
    "fla/layers/__init__.py": "",
    "fla/layers/utils.py": """
        def _unused(*args, **kwargs):
            raise NotImplementedError('padding masks are not used by the crosscheck')
        pad_input = unpad_input = get_unpad_data = index_first_axis = _unused
    """,
    "fla/ops/sse/__init__.py": """
        from .index import prepare_sample_relpos_global_index_flat

        def softmax_and_mask(*args, **kwargs):
            raise NotImplementedError('sse_implementation "mask" (a Triton kernel) is not crosschecked')
    """,
    "fla/ops/gla/__init__.py": """
        def chunk_gla(*args, **kwargs):
            raise NotImplementedError('linear_attn_type "gla" is not crosschecked')
        fused_recurrent_gla = chunk_gla
    """,
    "fla/ops/gated_delta_rule/__init__.py": """
        import torch
        from transformers.models.qwen3_5.modeling_qwen3_5 import torch_recurrent_gated_delta_rule

        def chunk_gated_delta_rule(q, k, v, g, beta, initial_state=None, output_final_state=False,
                                   cu_seqlens=None, use_qk_l2norm_in_kernel=False, scale=None, **kwargs):
            # q, k [1, T, H, dk], v [1, T, H, dv], g, beta [1, T, H]; cu_seqlens splits T into independent
            # segments n, each starting from initial_state[n] [H, dk, dv] (zeros without one).
            assert scale is None and use_qk_l2norm_in_kernel
            bounds = cu_seqlens.tolist() if cu_seqlens is not None else [0, q.shape[1]]
            outs, finals = [], []
            for n in range(len(bounds) - 1):
                a, b = bounds[n], bounds[n + 1]
                init = None if initial_state is None else initial_state[n:n + 1]
                o, s = torch_recurrent_gated_delta_rule(q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b], beta[:, a:b],
                                                        initial_state=init, output_final_state=True,
                                                        use_qk_l2norm_in_kernel=True)
                outs.append(o.to(v.dtype))
                finals.append(s.to(torch.float32 if initial_state is None else initial_state.dtype))
            return torch.cat(outs, dim=1), (torch.cat(finals, dim=0) if output_final_state else None)

        fused_recurrent_gated_delta_rule = chunk_gated_delta_rule
    """,
    "fla/modules/__init__.py": """
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        class RMSNorm(nn.Module):
            def __init__(self, hidden_size, elementwise_affine=True, bias=False, eps=1e-5, **kwargs):
                super().__init__()
                self.hidden_size, self.eps = hidden_size, eps
                self.weight = nn.Parameter(torch.ones(hidden_size))

            def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
                if residual is not None:
                    x = x + residual
                y = F.rms_norm(x, (self.hidden_size,), self.weight, self.eps)
                return (y, x) if prenorm else y

        class RotaryEmbedding(nn.Module):
            def __init__(self, dim, base=10000.0, scale_base=None, interleaved=False, pos_idx_in_fp32=True, device=None):
                super().__init__()
                assert scale_base is None and not interleaved and pos_idx_in_fp32
                self.dim, self.base = dim, float(base)

            def forward(self, q, k, seqlen_offset=0, max_seqlen=None, cu_seqlens=None, **kwargs):
                assert cu_seqlens is None and isinstance(seqlen_offset, int)
                T = q.shape[1]
                inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim))
                t = torch.arange(seqlen_offset, seqlen_offset + T, dtype=torch.float32)
                freqs = torch.outer(t, inv_freq)
                cos = torch.cat([freqs.cos(), freqs.cos()], -1).to(q.dtype)[None, :, None, :]
                sin = torch.cat([freqs.sin(), freqs.sin()], -1).to(q.dtype)[None, :, None, :]

                def rot(x):
                    x1, x2 = x.chunk(2, dim=-1)
                    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
                return rot(q), rot(k)

        class GatedMLP(nn.Module):
            def __init__(self, hidden_size, hidden_ratio=None, intermediate_size=None, hidden_act='swish', fuse_swiglu=True):
                super().__init__()
                assert intermediate_size is not None and hidden_act == 'swish'
                self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
                self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
                self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

            def forward(self, x, **kwargs):
                return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

        class _Unused(nn.Module):
            def __init__(self, *args, **kwargs):
                raise NotImplementedError('not used by the released configs (use_output_gate, use_short_conv are false)')

        FusedRMSNormGated = ShortConvolution = _Unused
        FusedCrossEntropyLoss = FusedLinearCrossEntropyLoss = _Unused
    """,
    "fla/modules/l2warp.py": "def l2_warp(loss, logits):\n    return loss\n",
    "fla/models/__init__.py": "",
    "flash_attn/__init__.py": """
        import torch

        def _attend(q, k, v, causal, window_size):
            # q [B, Tq, H, d], k, v [B, Tk, Hkv, d]
            Tq, Tk, H, Hkv = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
            k = k.repeat_interleave(H // Hkv, dim=2)
            v = v.repeat_interleave(H // Hkv, dim=2)
            s = torch.einsum('bqhd,bkhd->bhqk', q, k) * q.shape[-1] ** -0.5
            qpos = torch.arange(Tq)[:, None] + (Tk - Tq)
            kpos = torch.arange(Tk)[None, :]
            keep = torch.ones(Tq, Tk, dtype=torch.bool)
            if causal:
                keep &= kpos <= qpos
            left = window_size[0] if window_size is not None else -1
            if left >= 0:
                keep &= kpos >= qpos - left
            s = s.masked_fill(~keep, float('-inf'))
            return torch.einsum('bhqk,bkhd->bqhd', s.softmax(-1), v)

        def flash_attn_func(q, k, v, causal=False, window_size=(-1, -1), **kwargs):
            return _attend(q, k, v, causal, window_size)

        def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                                   causal=False, window_size=(-1, -1), **kwargs):
            cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
            outs = [_attend(q[None, cq[n]:cq[n + 1]], k[None, ck[n]:ck[n + 1]], v[None, ck[n]:ck[n + 1]], causal, window_size)[0]
                    for n in range(len(cq) - 1)]
            return torch.cat(outs, dim=0)
    """,
    "moba/__init__.py": "from .moba_naive import moba_attn_varlen_naive as moba_attn_varlen\n",
}


def build_sandbox(source: str) -> str:
    """A temporary folder with the official files and the stand-ins, importable as packages."""
    root = tempfile.mkdtemp(prefix="spb2-official-")
    for rel, text in STANDINS.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text).lstrip("\n"))
    placement = {
        "MoBA/moba/moba_naive.py": "moba/moba_naive.py",
        "flash-linear-attention_dev/fla/ops/sse/index.py": "fla/ops/sse/index.py",
        "flash-linear-attention_dev/fla/models/utils.py": "fla/models/utils.py",
    }
    for rel in OFFICIAL_FILES:
        dest = os.path.join(root, placement.get(rel, rel))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as f:
            f.write(official_text(source, rel))
    return root


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (the official init leaves norms at 1 and biases at 0), rounded to float32."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(0.01, 4, generator=g).log())
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            p.copy_(p.to(torch.float32))


def logits_of(model, ids: list[int]) -> tuple[list[list[float]], list[list[float]]]:
    """One-shot logits of every position, and the same tokens through the official cache (prefill + decode)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        one_shot = model(input_ids=x, use_cache=False).logits[0]
        out = model(input_ids=x[:, :PROMPT_TOKENS], use_cache=True)
        cached = [out.logits[0]]
        past = out.past_key_values
        for t in range(PROMPT_TOKENS, len(ids)):
            out = model(input_ids=x[:, t:t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            cached.append(out.logits[0])
    return one_shot.tolist(), torch.cat(cached, dim=0).tolist()


def write_case(name: str, config: dict, seed: int, model_classes, commit: str) -> None:
    """Builds, stores and runs one tiny model; writes test/fixtures/spikingbrain2-crosscheck/NAME/."""
    SSESWAMoBAConfig, SSESWAMoBAForCausalLM, official_model, published_cache = model_classes
    folder = os.path.join(OUT, name)
    torch.manual_seed(0)
    model = SSESWAMoBAForCausalLM(SSESWAMoBAConfig(**json.loads(json.dumps(config))))
    randomize(model, seed)
    model = model.to(torch.float64).eval()

    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    if config["tie_word_embeddings"]:
        # HF's save drops the tied copy; so does this one.
        assert torch.equal(tensors["lm_head.weight"], tensors["model.embeddings.weight"])
        del tensors["lm_head.weight"]
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    V = config["vocab_size"]
    ids = [(3 + seed + i * 7 + (i * i) % 5) % V for i in range(PROMPT_TOKENS + DECODE_TOKENS)]
    # fla's Cache (FLACache, the one used with transformers > 4.53.3) adds a step's tokens to its
    # seen-token count when layer 0 stores its state, and every layer reads its RoPE offset from that
    # count: in a decode step layers 1… rotate q and k at p + 1 while layer 0 and the prompt used p.
    # The one-shot forward and the vLLM plugin (explicit `positions`) use p. The fixture's decode
    # logits count the tokens after the last layer instead (as fla's LegacyFLACache does), so they
    # show what the cache path is meant to compute; the published count's figure is printed.
    num_layers = config["num_hidden_layers"]

    class CountAfterLastLayer(published_cache):
        def update(self, *args, layer_idx=0, offset=1, **kwargs):
            state = super().update(*args, layer_idx=layer_idx, offset=0, **kwargs)
            if layer_idx == num_layers - 1:
                self._seen_tokens += int(offset)
            return state

    official_model.Cache = published_cache
    _, cached_published = logits_of(model, ids)
    official_model.Cache = CountAfterLastLayer
    one_shot, cached = logits_of(model, ids)
    official_model.Cache = published_cache
    import transformers
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump({
            "source": f"BICLab/SpikingBrain2.0 {commit}, SSESWAMoBAForCausalLM, float64; "
                      f"transformers {transformers.__version__}, torch {torch.__version__}",
            "token_ids": ids,
            "decode_from": PROMPT_TOKENS,
            "logits": [[round(v, 10) for v in row] for row in one_shot],
            "logits_cached": [[round(v, 10) for v in row] for row in cached],
        }, f)

    def max_diff(a, b):
        return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    print(f"{name}: {len(ids)} tokens, max |logit| {max(abs(v) for row in one_shot for v in row):.3f}; "
          f"prompt: max |one-shot − cached| {max_diff(one_shot[:PROMPT_TOKENS], cached[:PROMPT_TOKENS]):.2e}; "
          f"decode (dense MoBA layers): {max_diff(one_shot[PROMPT_TOKENS:], cached[PROMPT_TOKENS:]):.2e}; "
          f"published cache count (RoPE p + 1 in layers 1… while decoding): {max_diff(cached_published, cached):.2e}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python tools/spikingbrain2_crosscheck.py PATH/TO/SpikingBrain2.0 (a checkout or a git mirror)", file=sys.stderr)
        return 2
    source = argv[1]
    commit = official_commit(source)
    sandbox = build_sandbox(source)
    try:
        sys.path.insert(0, sandbox)
        from spb2.configuration_sse_swa_moba import SSESWAMoBAConfig
        from spb2.modeling_sse_swa_moba import SSESWAMoBAForCausalLM

        # The official code targets transformers 4.57 (a list of tied keys); transformers 5 wants the
        # mapping target → source. Same tie: lm_head.weight is model.embeddings.weight.
        SSESWAMoBAForCausalLM._tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}
        # fla's cache layer predates transformers 5's abstract `get_max_length` (never called here).
        import fla.models.utils
        fla.models.utils.FLALayer.__abstractmethods__ = frozenset()
        import spb2.modeling_sse_swa_moba as official_model
        classes = (SSESWAMoBAConfig, SSESWAMoBAForCausalLM, official_model, official_model.Cache)
        print(f"official code: BICLab/SpikingBrain2.0 {commit}")
        write_case("released-options", CONFIG, 1, classes, commit)
        write_case("other-options", OTHER_CONFIG, 2, classes, commit)
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
