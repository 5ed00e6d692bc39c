"""Shared helpers for the training pipeline: config, logging, token data, checkpoints."""
import json
import os
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def setup_torch(seed):
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.manual_seed(seed)
    random.seed(seed)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def save_atomic(obj, path):
    tmp = Path(f"{path}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj, path):
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def stream(docs, eos_id):
    """Concatenates documents into one token stream, each preceded by the end-of-text token."""
    out = []
    for ids in docs:
        out.append(eos_id)
        out.extend(ids)
    return torch.tensor(out, dtype=torch.long)


def chunk_texts(docs, eos_id, context, min_tokens):
    """Cuts documents into model-sized texts: [eos] + up to context-1 tokens; tiny tails are dropped.

    With eos_id None (a package without BOS), a text is up to `context` tokens of its document, the first of which
    leads: it is conditioned on, never scored nor part of a feature, as BOS otherwise is."""
    lead = [] if eos_id is None else [eos_id]
    step = context - len(lead)
    texts = []
    for ids in docs:
        for start in range(0, len(ids), step):
            piece = ids[start:start + step]
            if len(piece) - (1 - len(lead)) >= min_tokens:
                texts.append(lead + piece)
    return texts


def load_cached(work):
    """The pretrained base model (eval mode) and the cached text sets of a build's work folder."""
    from model import GPT
    ckpt = torch.load(work / "base.pt")
    base = GPT(**ckpt["config"])
    base.load_state_dict(ckpt["model"])
    base.eval()
    return base, torch.load(work / "textsets.pt")


def open_build(config_path):
    """The config, work folder, pretrained base (eval mode) and cached text sets of a build (`build.py --until cache`)."""
    cfg = json.loads(Path(config_path).read_text())
    work = ROOT / "training/.cache" / cfg["name"]
    setup_torch(cfg["seed"])
    base, sets = load_cached(work)
    return cfg, work, base, sets
