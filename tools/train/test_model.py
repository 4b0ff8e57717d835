"""Unit check: chunked model == token-by-token reference (float64), incl. T > window and T % chunk != 0."""
import torch
from model import Config, GLAswaForCausalLM, reference_logits


def main():
    torch.manual_seed(0)
    c = Config(vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, sliding_window=7)
    m = GLAswaForCausalLM(c).double()
    with torch.no_grad():   # larger random weights so gates/decays are far from trivial
        for n, p in m.named_parameters():
            if not n.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.3)
            else:
                p.add_(torch.randn_like(p) * 0.2)
    ids = torch.randint(0, 50, (45,))
    ref = reference_logits(m, ids)
    worst = 0.0
    for chunk in (1, 4, 16, 64):
        out = m(ids[None], chunk=chunk)[0]
        err = (out - ref).abs().max().item()
        worst = max(worst, err)
        print(f"chunk {chunk}: max |chunked - reference| = {err:.3e}")
    # float32 chunked vs float64 reference
    m32 = GLAswaForCausalLM(c)
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    e32 = (m32(ids[None])[0].double() - ref).abs().max().item()
    print(f"float32 chunked vs float64 reference: {e32:.3e}")
    assert worst < 1e-9, worst
    assert e32 < 1e-3, e32
    print("OK")


if __name__ == "__main__":
    main()
