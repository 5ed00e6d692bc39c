"""One command from npm-installed corpora to a served model package.

    python3 training/build.py --config training/configs/default.json --out models/default

Each stage writes its result under the work folder and is skipped when that result exists, so an interrupted
build resumes where it stopped (pretraining also resumes from its last checkpoint).
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bpe  # noqa: E402
import data  # noqa: E402
from common import ROOT, log, save_atomic, setup_torch, write_json  # noqa: E402


def stage(name, done_path, timings, is_done=None):
    def wrap(fn):
        def run(*args):
            if is_done() if is_done else done_path.exists():
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
    parser.add_argument("--final", action="store_true",
                        help="also score test and test2 (once, for the final table, after every choice was made on validation)")
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
                for split in data.SPLITS + ((data.TEST2,) if role == "M" else ()):
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

    def load_base():
        from model import GPT
        ckpt = torch.load(work / "base.pt")
        model = GPT(**ckpt["config"])
        model.load_state_dict(ckpt["model"])
        model.eval()
        return model, ckpt["history"]

    def text_sets():
        return torch.load(work / "textsets.pt")  # {name: TextSet}

    @stage("cache", work / "textsets.pt", timings)
    def cache_hidden():
        from adapt import TextSet
        from common import chunk_texts
        base, _ = load_base()
        tokens = torch.load(work / "tokens.pt")
        eos = bpe.Tokenizer(work / "tokenizer.json").eos_id
        sets = {}
        for role, domains in (("M", cfg["adapt_domains"]), ("P", cfg["pretrain_domains"])):
            for split in (("train", "val", "test", data.TEST2) if role == "M" else ("val", "test")):
                texts, labels = [], []
                for d in domains:
                    chunks = chunk_texts(tokens[(role, d, split)], eos, cfg["model"]["context"], cfg["texts"]["min_tokens"])
                    texts += chunks
                    labels += [d] * len(chunks)
                log(f"caching hidden states of {role}/{split}: {len(texts)} texts")
                sets[f"{role}_{split}"] = TextSet(base, texts, labels)
        save_atomic(sets, work / "textsets.pt")

    @stage("static", work / "static.pt", timings)
    def run_static():
        from adapt import train_static
        base, _ = load_base()
        sets = text_sets()
        save_atomic(train_static(base.wte.weight.detach(), sets["M_train"], cfg, cfg["seed"]), work / "static.pt")

    @stage("hypernet", work / "hypernet.pt", timings)
    def run_hypernet():
        from adapt import train_hypernet
        base, _ = load_base()
        sets = text_sets()
        static = torch.load(work / "static.pt") if cfg["hypernet"].get("on_static") else None
        net = train_hypernet(base.wte.weight.detach(), sets["M_train"], cfg, cfg["seed"], static)
        save_atomic(net.state_dict(), work / "hypernet.pt")

    @stage("library", work / "library.pt", timings)
    def run_library():
        from adapt import train_library
        base, _ = load_base()
        save_atomic(train_library(base.wte.weight.detach(), text_sets()["M_train"], cfg, cfg["seed"]), work / "library.pt")

    @stage("masks", work / "masks.pt", timings)
    def run_masks():
        from adapt import train_masks
        base, _ = load_base()
        save_atomic(train_masks(base.wte.weight.detach(), text_sets()["M_train"], cfg, cfg["seed"]), work / "masks.pt")

    def load_hypernet(train):
        """The trained hypernetwork (eval mode), inside its gate when the config has one (centroids from train)."""
        from model import HyperNetwork
        m = cfg["model"]
        basis = load_base()[0].wte.weight if cfg["hypernet"].get("embedding_basis") else None
        net = HyperNetwork(m["d_model"], m["vocab_size"], cfg["lora"]["rank"], cfg["hypernet"]["hidden"], basis)
        if cfg["hypernet"].get("on_static"):
            from adapt import Stacked
            net = Stacked(net, torch.load(work / "static.pt"))
        net.load_state_dict(torch.load(work / "hypernet.pt"))
        net.eval()
        from adapt import gated
        return gated(net, train, cfg["hypernet"].get("gate"))

    def evaluated():
        path = work / "eval.json"
        if not path.exists():
            return False
        report = json.loads(path.read_text())
        # a gate changes every Chameleon number without retraining anything
        return (not args.final or "test2" in report) and report.get("gate") == cfg["hypernet"].get("gate")

    @stage("evaluate", work / "eval.json", timings, evaluated)
    def run_evaluate():
        """Validation only, unless --final: builds never print test numbers, so nothing is chosen on them."""
        from evaluate import LABELS, PROMPT_LENGTHS, baseline_adapters, continuation_markdown, continuation_tables, evaluate_all, examples_markdown, examples_table, markdown_table, select_temperatures
        base, _ = load_base()
        sets = text_sets()
        wte = base.wte.weight.detach()
        static, net = torch.load(work / "static.pt"), load_hypernet(sets["M_train"])
        kind = cfg["hypernet"].get("context", "embedding")
        splits = ("val", "test", data.TEST2) if args.final else ("val",)
        # prompts must leave room for a continuation within the model's context (the tiny config's is 64)
        prompts = [p for p in PROMPT_LENGTHS if p <= cfg["model"]["context"] // 2]
        target_p = 64 if 64 in prompts else prompts[-1]
        temperatures, selection = select_temperatures(wte, sets["M_val"], torch.load(work / "library.pt"), torch.load(work / "masks.pt"), cfg, target_p)
        baselines = baseline_adapters(torch.load(work / "library.pt"), torch.load(work / "masks.pt"), temperatures)
        names = {"val": "validation", "test": "test", data.TEST2: data.TEST2}
        echo, continuation, examples = {}, {}, {}
        for split in splits:
            log(f"evaluating on {names[split]}")
            p_set = sets["P_val" if split == "val" else "P_test"]
            echo[names[split]] = evaluate_all(wte, {"M": sets[f"M_{split}"], "P": p_set}, static, net, cfg, cfg["seed"], baselines)
            continuation[names[split]] = continuation_tables(wte, sets[f"M_{split}"], prompts, static, net, cfg, cfg["seed"], kind, baselines)
            examples[names[split]] = examples_table(wte, sets["M_train"], sets[f"M_{split}"], target_p, static, net, cfg, cfg["seed"])
        final = names[splits[-1]]
        at = continuation[final][target_p]
        ratio = at["chameleon_windows"]["overall"] / at["static"]["overall"]
        report = {
            "metric": "token-weighted perplexity; primary: prompt -> continuation (the adapter sees the first P tokens "
                      "of each text, the rest is scored); secondary: echo (every position scored, the text's own tokens in its context)",
            "texts": f"documents cut into texts of at most {cfg['model']['context']} tokens (BOS first)",
            "eval": cfg["eval"],
            "labels": LABELS,
            "gate": cfg["hypernet"].get("gate"),
            "continuation": continuation,
            "selector_temperatures": {"chosen": temperatures, "validation": selection},
            "examples": examples,
            "examples_markdown": examples_markdown(examples[names[splits[-1]]]),
            "storage_bytes": storage_bytes(work, cfg),
            **{name: table for name, table in echo.items()},
            "target": {"goal": f"chameleon_windows <= 0.90 x static on M {final}, prompt -> continuation, {target_p}-token prompts",
                       "split": final, "prompt_tokens": target_p, "ratio": round(ratio, 4), "met": ratio <= 0.90},
            "table_markdown": markdown_table(echo[final], cfg["adapt_domains"], cfg["pretrain_domains"]),
            "continuation_markdown": continuation_markdown(continuation[final]),
        }
        write_json(report, work / "eval.json")
        print(f"{final}, echo:\n{report['table_markdown']}\n{final}, prompt -> continuation:\n{report['continuation_markdown']}")
        print(f"{final}, adapters made from N training examples of each domain, scored after {target_p}-token prompts:\n{report['examples_markdown']}")
        log(f"chameleon_windows / static on M {final}, {target_p}-token prompts: {ratio:.4f} (target 0.90)")

    def storage_bytes(work, cfg):
        """Bytes each adaptation method stores (float32), for the tables: what the paper weighs against quality."""
        count = lambda tensors: 4 * sum(t.numel() for t in tensors)  # noqa: E731
        library, masks = torch.load(work / "library.pt"), torch.load(work / "masks.pt")
        return {"static": count(torch.load(work / "static.pt")),
                "hypernet": count(torch.load(work / "hypernet.pt").values()),
                "library": count([library["lora_a"], library["lora_b"], library["centroids"]]),
                "masks": count([masks[k] for k in ("lora_a", "lora_b", "mask_a", "mask_b", "centroids")])}

    def unseen_domains(quality_path):
        """The full-budget runs of this config with one M domain kept out of training (`quality.py`), if there are
        any: each with its validation (ungated), the gate's and the shrinkage's validation sweeps, and its final
        unseen-domain scoring (gated and not): test3, or the held-out domain's test2 for a run whose test2 was never
        scored; the gate-only scoring stays beside a later one with shrinkage."""
        if not quality_path.exists():
            return []
        found = []
        for name, run in json.loads(quality_path.read_text()).items():
            overrides = {k: v for k, v in run["overrides"].items() if k != "holdout"}
            same = all(cfg.get(k) == v if not isinstance(v, dict) else all(cfg.get(k, {}).get(kk) == vv for kk, vv in v.items()) for k, v in overrides.items())
            if "holdout" in run["overrides"] and same and run["steps"] == cfg["hypernet"]["steps"]:
                final = run.get("final_unseen_prior") or run.get("final_unseen_test2") or run.get("final_unseen")
                found.append({"run": name, "held_out": run["overrides"]["holdout"], "validation": run["splits"], "test2": run.get("final"),
                              "gate_sweep": run.get("gate_sweep"), "prior_sweep": run.get("prior_sweep"),
                              "final": final, "final_gate_only": run.get("final_unseen") if final is not run.get("final_unseen") else None})
        return found

    def exported():
        manifest_path = out / "manifest.json"
        if not manifest_path.exists():
            return False
        return json.loads(manifest_path.read_text()).get("training", {}).get("config") == cfg

    @stage("export", out / "manifest.json", timings, exported)
    def run_export():
        from evaluate import plot
        from export import export_package
        # The service computes embedding features before the prefill, so hidden-state contexts cannot be served.
        if cfg["hypernet"].get("context", "embedding") != "embedding":
            raise SystemExit("export: hypernet.context=hidden is a validation experiment; the service computes embedding features")
        base, history = load_base()
        sets = text_sets()
        report = json.loads((work / "eval.json").read_text())
        out.mkdir(parents=True, exist_ok=True)
        report["unseen_domains"] = unseen_domains(work / "quality.json")
        write_json(report, out / "eval.json")
        final = "test2" if "test2" in report else "validation"
        plot(report[final], report["continuation"][final], report["unseen_domains"], cfg["adapt_domains"], final, out / "eval.png")
        test_ids = sets["M_test"].token_ids
        prompts = [test_ids[0][:7], test_ids[len(test_ids) // 2][:4], test_ids[-1][:9]]
        eos = bpe.Tokenizer(work / "tokenizer.json").eos_id
        summary = json.loads((data_dir / "summary.json").read_text())
        extra = {
            "data": summary,
            "training": {"config": cfg, "pretrain_history": history, "stage_seconds": timings},
            "eval": {k: report[k] for k in ("metric", "eval", "validation", "test", "test2", "target") if k in report},
        }
        extra["eval"].update({k: report[k] for k in ("selector_temperatures", "storage_bytes") if k in report})
        manifest = export_package(out, base, load_hypernet(sets["M_train"]), torch.load(work / "static.pt"), work / "tokenizer.json", cfg, eos, prompts, extra,
                                  torch.load(work / "library.pt"), torch.load(work / "masks.pt"), report["selector_temperatures"]["chosen"])
        size = sum(p.stat().st_size for p in out.iterdir())
        log(f"package written to {out}: {len(manifest['files'])} files, {size / 1e6:.1f} MB")

    stages = [build_data, build_tokenizer, encode, run_pretrain, cache_hidden, run_static, run_hypernet, run_library, run_masks, run_evaluate, run_export]
    names = ["data", "tokenizer", "encode", "pretrain", "cache", "static", "hypernet", "library", "masks", "evaluate", "export"]
    for name, fn in zip(names, stages):
        fn()
        write_json(timings, timings_path)
        if args.until == name:
            break


if __name__ == "__main__":
    main()
