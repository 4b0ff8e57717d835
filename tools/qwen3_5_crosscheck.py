"""Crosscheck fixture for the Qwen3.5 float64 reference (test/helpers/reference-qwen3_5.ts).

Builds tiny random Qwen3.5 text models with the official Hugging Face code (transformers
models/qwen3_5: Qwen3_5ForCausalLM, and Qwen3_5ForConditionalGeneration with a one-block vision
tower), stores them as float32 safetensors checkpoints, runs them in float64 and writes the logits of
every position, one-shot and through the official cache (prefill, then decode one token at a time:
the recurrent delta rule and the conv-state update path), to test/fixtures/qwen3_5-crosscheck/.
Also writes the configs transformers itself builds by default (Qwen3_5TextConfig(), documented there as
the Qwen3.5-9B style, and the multimodal Qwen3_5Config()) to test/fixtures/qwen3_5-configs/, for inspect.

Offline tool, not part of the server or the test run. Needs torch, transformers (>= 5.2, with
models/qwen3_5), safetensors, numpy:

    python tools/qwen3_5_crosscheck.py            # rewrites test/fixtures/qwen3_5-crosscheck/

The official code computes its RMSNorms and the delta rule in float32 whatever the model dtype
(Qwen3_5RMSNorm: x.float(); torch_chunk_gated_delta_rule: .to(torch.float32)), so the TypeScript
reference is compared with these logits at 1e-4 (they are ~1, the float32 rounding is ~1e-6).
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen3_5Config, Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration, Qwen3_5TextConfig

OUT = os.path.join(os.path.dirname(__file__), "..", "test", "fixtures", "qwen3_5-crosscheck")
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "test", "fixtures", "qwen3_5-configs")

TEXT = dict(
    vocab_size=64,
    hidden_size=40,
    intermediate_size=72,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=12,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=8,
    linear_value_head_dim=6,
    linear_conv_kernel_dim=4,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                     "mrope_section": [1, 1, 1], "mrope_interleaved": True},
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    bos_token_id=1,
    eos_token_id=2,
)

PROMPT_TOKENS = 24
DECODE_TOKENS = 6


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (the official init leaves norms and many weights trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(0.01, 4, generator=g).log())
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("linear_attn.norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))  # zero-centred: the scale is 1 + w
            elif p.dim() >= 2:
                fan_in = p.shape[-1] if "conv1d" not in name else p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def logits_of(model, ids: list[int]) -> tuple[list[list[float]], list[list[float]]]:
    """One-shot logits of every position, and the same sequence through the cache (prefill + decode)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        one_shot = model(input_ids=x, use_cache=False).logits[0]
        split = len(ids) - DECODE_TOKENS
        out = model(input_ids=x[:, :split], use_cache=True)
        cached = [out.logits[0]]
        past = out.past_key_values
        for t in range(split, len(ids)):
            out = model(input_ids=x[:, t:t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            cached.append(out.logits[0])
        cached = torch.cat(cached, dim=0)
    return one_shot.tolist(), cached.tolist()


def write_case(name: str, model, seed: int, extra_tensors: dict[str, torch.Tensor]) -> None:
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    model = model.to(torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    if extra_tensors:
        path = os.path.join(folder, "model.safetensors")
        tensors = load_file(path)
        tensors.update(extra_tensors)
        save_file(tensors, path, metadata={"format": "pt"})
    ids = [(seed * 13 + i * 7 + (i * i) % 5) % TEXT["vocab_size"] for i in range(PROMPT_TOKENS + DECODE_TOKENS)]
    one_shot, cached = logits_of(model.to(torch.float64).eval(), ids)
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump({
            "source": "transformers " + __import__("transformers").__version__ + ", " + type(model).__name__ + ", float64",
            "token_ids": ids,
            "decode_from": PROMPT_TOKENS,
            "logits": [[round(v, 10) for v in row] for row in one_shot],
            "logits_cached": [[round(v, 10) for v in row] for row in cached],
        }, f)
    for leftover in ("generation_config.json",):
        p = os.path.join(folder, leftover)
        if os.path.exists(p):
            os.remove(p)
    print(f"{name}: {len(ids)} tokens, max |one-shot − cached| = "
          f"{max(abs(a - b) for ra, rb in zip(one_shot, cached) for a, b in zip(ra, rb)):.2e}")


def write_default_configs() -> None:
    for name, config in (("transformers-default-text", Qwen3_5TextConfig()), ("transformers-default-multimodal", Qwen3_5Config())):
        folder = os.path.join(CONFIGS, name)
        config.save_pretrained(folder)
        print(f"{name}: {folder}/config.json")


def main() -> None:
    write_default_configs()
    torch.manual_seed(0)
    text = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**TEXT, tie_word_embeddings=False))
    randomize(text, 1)
    write_case("causal-lm", text, 1, {})

    config = Qwen3_5Config(
        text_config=dict(TEXT, tie_word_embeddings=True),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=40,
                           patch_size=2, temporal_patch_size=1, spatial_merge_size=1, num_position_embeddings=16),
        tie_word_embeddings=True,
    )
    wrapper = Qwen3_5ForConditionalGeneration(config)
    randomize(wrapper, 2)
    # Checkpoints of the official release also carry a multi-token-prediction head, which is skipped.
    write_case("conditional-generation", wrapper, 2, {"mtp.fc.weight": torch.full((40, 80), 0.5)})


if __name__ == "__main__":
    sys.exit(main())
