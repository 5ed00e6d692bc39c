"""One command from npm-installed corpora to a served model package.

    python3 training/build.py --config training/configs/default.json --out models/default

Each stage writes its result under the work folder and is skipped when that result exists, so an interrupted
build resumes where it stopped (pretraining also resumes from its last checkpoint).
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bpe  # noqa: E402
import data  # noqa: E402
from common import ROOT, log, save_atomic, setup_torch, write_json  # noqa: E402


def stage(name, done_path, timings):
    def wrap(fn):
        def run(*args):
            if done_path.exists():
                log(f"stage {name}: done already ({done_path.name})")
                return
            log(f"stage {name}: start")
            started = time.time()
            fn(*args)
            timings[name] = round(time.time() - started, 1)
            log(f"stage {name}: {timings[name]} s")
        return run
    return wrap


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "training/configs/default.json"))
    parser.add_argument("--out", default=str(ROOT / "models/default"))
    parser.add_argument("--work", default=None)
    parser.add_argument("--until", default=None, help="stop after this stage")
    args = parser.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    work = Path(args.work or ROOT / "training/.cache" / cfg["name"])
    out = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    setup_torch(cfg["seed"])
    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    data_dir = work / "data"

    @stage("data", data_dir / "summary.json", timings)
    def build_data():
        data.build(cfg, data_dir)

    @stage("tokenizer", work / "tokenizer.json", timings)
    def build_tokenizer():
        texts = [r["text"] for d in cfg["pretrain_domains"] for r in data.load_split(data_dir, "P", d, "train")]
        texts += [r["text"] for d in cfg["adapt_domains"] for r in data.load_split(data_dir, "M", d, "train")]
        vocab, merges = bpe.train(texts, cfg["tokenizer"]["vocab_size"], cfg["tokenizer"]["min_frequency"])
        (work / "tokenizer.json").write_text(json.dumps(bpe.to_json(vocab, merges), ensure_ascii=False))

    @stage("encode", work / "tokens.pt", timings)
    def encode():
        tok = bpe.Tokenizer(work / "tokenizer.json")
        tokens = {}
        for role, domains in (("P", cfg["pretrain_domains"]), ("M", cfg["adapt_domains"])):
            for domain in domains:
                for split in data.SPLITS:
                    tokens[(role, domain, split)] = [tok.encode(r["text"]) for r in data.load_split(data_dir, role, domain, split)]
        save_atomic(tokens, work / "tokens.pt")

    @stage("pretrain", work / "base.pt", timings)
    def run_pretrain():
        from common import stream
        from pretrain import pretrain
        tokens = torch.load(work / "tokens.pt")
        eos = bpe.Tokenizer(work / "tokenizer.json").eos_id
        train = stream([ids for d in cfg["pretrain_domains"] for ids in tokens[("P", d, "train")]], eos)
        val = stream([ids for d in cfg["pretrain_domains"] for ids in tokens[("P", d, "val")]], eos)
        log(f"pretraining on {len(train)} tokens ({len(val)} validation)")
        model, history = pretrain(cfg, train, val, work)
        save_atomic({"model": model.state_dict(), "config": model.config, "history": history}, work / "base.pt")

    stages = [build_data, build_tokenizer, encode, run_pretrain]
    names = ["data", "tokenizer", "encode", "pretrain"]
    for name, fn in zip(names, stages):
        fn()
        write_json(timings, timings_path)
        if args.until == name:
            break


if __name__ == "__main__":
    main()
