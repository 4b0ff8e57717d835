"""Train spikingbrain-tiny on the token streams in work/ (see tokenize_data.py).

Writes to --out: ckpt_0.pt, ckpt_1.pt, ckpt_2.pt (the state dict in float32, split in pieces of <= 15 MB,
the checkpoint with the best validation loss so far, rewritten about every minute) and loss.json
(config, hyper-parameters, train/val loss curve, tokens seen, wall time, device).
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from model import Config, GLAswaForCausalLM


def save_pieces(model, out, limit=15_000_000):
    sd = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    pieces, cur, size = [], {}, 0
    for k, v in sd.items():
        n = v.numel() * 4
        if cur and size + n > limit:
            pieces.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += n
    pieces.append(cur)
    for i, p in enumerate(pieces):
        tmp = os.path.join(out, f".ckpt_{i}.tmp")
        torch.save(p, tmp)
        os.replace(tmp, os.path.join(out, f"ckpt_{i}.pt"))
    return len(pieces)


def load_pieces(out):
    sd, i = {}, 0
    while os.path.exists(os.path.join(out, f"ckpt_{i}.pt")):
        sd.update(torch.load(os.path.join(out, f"ckpt_{i}.pt"), map_location="cpu"))
        i += 1
    return sd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "work"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--minutes", type=float, default=7.0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--eval-every", type=float, default=60.0, help="seconds between val evals + checkpoints")
    ap.add_argument("--eval-windows", type=int, default=0, help="0 = all val windows")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1234)
    # model size (defaults: the benchmark reference size)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--window", type=int, default=256)
    args = ap.parse_args()
    out = args.out or os.path.join(args.work, "run")
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = Config(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                 num_key_value_heads=args.kv_heads, intermediate_size=args.ffn, sliding_window=args.window)
    model = GLAswaForCausalLM(cfg).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"params {nparams} ({nparams*4/1e6:.1f} MB fp32) device {dev} "
          f"{torch.cuda.get_device_name(0) if dev.type == 'cuda' else ''} torch {torch.__version__}", flush=True)

    train = torch.from_numpy(np.load(os.path.join(args.work, "train.npy")).astype(np.int64)).to(dev)
    val = torch.from_numpy(np.load(os.path.join(args.work, "val.npy")).astype(np.int64)).to(dev)
    T = args.seq
    nval = (len(val) - 1) // T
    if args.eval_windows:
        nval = min(nval, args.eval_windows)
    print(f"train tokens {len(train)}, val windows {nval}x{T}", flush=True)

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() == 2 and "norm" not in n else no_decay).append(p)
    opt_kw = dict(lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    if dev.type == "cuda":
        opt_kw["fused"] = True
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}], **opt_kw)
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)
    ar = torch.arange(T + 1, device=dev)
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=True) if dev.type == "cuda" else \
        dict(device_type="cpu", enabled=False)

    def batch(bs):
        off = torch.randint(0, len(train) - T - 1, (bs,), device=dev, generator=gen)
        x = train[off[:, None] + ar]
        return x[:, :-1], x[:, 1:]

    @torch.no_grad()
    def evaluate():
        model.eval()
        tot, n = 0.0, 0
        eb = 16
        for i in range(0, nval, eb):
            idx = torch.arange(i, min(nval, i + eb), device=dev)
            x = val[idx[:, None] * T + ar]
            with torch.autocast(**amp):
                logits = model(x[:, :-1], args.chunk)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                   reduction="sum")
            tot += loss.item()
            n += x[:, 1:].numel()
        model.train()
        return tot / n

    log = {"config": cfg.to_dict(), "args": vars(args), "params": nparams, "train": [], "val": [],
           "device": (torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"),
           "torch": torch.__version__}
    bs = args.batch
    budget = args.minutes * 60.0
    def checkpoint(step, tokens, best, final):
        """Validation loss now; keeps the weights when it is the best so far; rewrites loss.json. Returns the best."""
        vl = evaluate()
        el = time.time() - t0
        log["val"].append({"step": step, "tokens": tokens, "time": el, "loss": vl})
        if final:
            print(f"== final step {step} val {vl:.4f} tokens {tokens/1e6:.1f}M time {el:.0f}s", flush=True)
        else:
            print(f"== step {step} val {vl:.4f}", flush=True)
        if vl < best:
            best = vl
            save_pieces(model, out)
            log["best"] = {"step": step, "tokens": tokens, "val_loss": vl}
        log.update(steps=step, tokens=tokens, train_seconds=el, batch=bs, wall_seconds=time.time() - t_start)
        json.dump(log, open(os.path.join(out, "loss.json"), "w"))
        return best

    total_steps = args.max_steps or 10 ** 9
    step, tokens, best = 0, 0, float("inf")
    t0 = time.time()
    last_eval = t0
    timing_start = None
    ema = None
    while True:
        now = time.time()
        if step >= total_steps or now - t0 > budget:
            break
        if step == 30 and not args.max_steps:
            timing_start = (now, step)
        if step == 80 and not args.max_steps and timing_start:
            per = (now - timing_start[0]) / (step - timing_start[1])
            total_steps = step + int((budget - (now - t0)) / per * 0.97)
            log["planned_steps"] = total_steps
            print(f"step time {per*1000:.0f} ms -> planned steps {total_steps}", flush=True)
        if step < args.warmup:
            lr = args.lr * (step + 1) / args.warmup
        else:
            span = max(1, (total_steps if total_steps < 10 ** 9 else
                           step + 1000) - args.warmup)
            frac = min(1.0, (step - args.warmup) / span)
            lr = args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
        for gparam in opt.param_groups:
            gparam["lr"] = lr
        x, y = batch(bs)
        try:
            with torch.autocast(**amp):
                logits = model(x, args.chunk)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except torch.cuda.OutOfMemoryError:
            if step > 0:
                raise
            del x, y
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            bs //= 2
            print(f"OOM, batch -> {bs}", flush=True)
            continue
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += bs * T
        if step % 10 == 0 or step <= 3:
            lv = loss.item()
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            el = time.time() - t0
            log["train"].append({"step": step, "tokens": tokens, "time": el, "loss": lv, "lr": lr})
            if step % 50 == 0 or step <= 3:
                print(f"step {step} loss {lv:.4f} (ema {ema:.4f}) lr {lr:.2e} gnorm {gn.item():.2f} "
                      f"tok {tokens/1e6:.1f}M {tokens/el/1e3:.0f}k tok/s t {el:.0f}s", flush=True)
            if step == 50 and dev.type == "cuda":
                print(f"max memory allocated {torch.cuda.max_memory_allocated()/2**30:.1f} GiB", flush=True)
        if time.time() - last_eval > args.eval_every:
            best = checkpoint(step, tokens, best, final=False)
            last_eval = time.time()
    best = checkpoint(step, tokens, best, final=True)
    print("best", log.get("best"), flush=True)


if __name__ == "__main__":
    main()
