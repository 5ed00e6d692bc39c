"""Pretrains the base GPT on P with AdamW and a cosine schedule; checkpoints so that a rerun resumes."""
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import log, save_atomic
from model import GPT


def evaluate_stream(model, tokens, context, batches=8):
    model.eval()
    losses = []
    with torch.no_grad():
        starts = range(0, max(1, len(tokens) - context - 1), context)
        for n, s in enumerate(starts):
            if n >= batches * 8:
                break
            x = tokens[s:s + context + 1].unsqueeze(0)
            losses.append(F.cross_entropy(model(x[:, :-1])[0], x[0, 1:]).item())
    model.train()
    return sum(losses) / len(losses)


def pretrain(cfg, train_tokens, val_tokens, work):
    m = cfg["model"]
    p = cfg["pretrain"]
    model = GPT(m["vocab_size"], m["d_model"], m["n_layer"], m["n_head"], m["context"], p.get("dropout", 0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    ckpt_path = work / "pretrain_ckpt.pt"
    step, history = 0, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, history = ckpt["step"], ckpt["history"]
        torch.set_rng_state(ckpt["rng"])
        log(f"resuming pretraining at step {step}")
    steps, batch, context = p["steps"], p["batch"], m["context"]

    def lr_at(s):
        if s < p["warmup"]:
            return p["lr"] * (s + 1) / p["warmup"]
        progress = (s - p["warmup"]) / max(1, steps - p["warmup"])
        return p["lr_min"] + 0.5 * (p["lr"] - p["lr_min"]) * (1 + math.cos(math.pi * progress))

    bar = tqdm(total=steps, initial=step, desc="pretrain", mininterval=10)
    started = time.time()
    while step < steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        starts = torch.randint(0, len(train_tokens) - context - 1, (batch,))
        x = torch.stack([train_tokens[s:s + context + 1] for s in starts])
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, m["vocab_size"]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % p["eval_every"] == 0 or step == steps:
            val = evaluate_stream(model, val_tokens, context)
            history.append({"step": step, "train_loss": loss.item(), "val_loss": val, "seconds": time.time() - started})
            log(f"step {step}/{steps} train {loss.item():.3f} val {val:.3f} ppl {math.exp(val):.1f}")
            save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
                         "rng": torch.get_rng_state()}, ckpt_path)
    bar.close()
    return model, history
