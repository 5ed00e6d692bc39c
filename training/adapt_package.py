"""Adapts an imported base model package: static LoRA, ChameleonLLM hypernetwork, context gate, and (flag) the seed's
LoRA-library and LoRA*Mask baselines, with the default build's code and evaluation hygiene.

    npm run model:adapt -- --base PKG --corpus CORPUS [--budget small|medium|full] [--baselines] [--final] [--device cuda]
    python3 training/adapt_package.py --write-npm-corpus DIR      # the npm corpora of the default build, as a CORPUS folder

PKG is a package written by `npm run model:import` (its manifest's `architecture.source.path` names the Hugging Face
checkpoint the torch base is rebuilt from; `--checkpoint HF_DIR` overrides it). CORPUS is a folder with one
sub-folder of .txt files per domain (a .txt file one document; the files of a sub-sub-folder form one group, kept in
one split), a folder of .txt files without domains, or a JSONL of {"text", "domain"} ("domain" absent everywhere: no
domains; an optional "group" keeps documents together). Without domains, the texts form one pseudo-domain: clusters
come from k-means alone, and there is no gate, library or masks.

Texts are encoded by the service's own tokenizer library (training/encode_texts.mjs) and cut into pieces of at
most --text-tokens tokens with the package's BOS first (or, without BOS, the piece's first token leading). Each
domain's documents are split 80/10/10 into train / validation / test by a seeded shuffle; every choice (the gate's
threshold and shrinkage prior, the selectors' temperatures) is made on validation, and test is scored once, with
--final. Stages are cached in the work folder (default training/.cache/adapt-<package name>/) and skipped when
done, so an interrupted run resumes; the hidden-state cache also resumes mid-way. The package gets the static
factors, hypernet.onnx, the gate, library and masks, eval.json and eval.png, and an updated manifest; its decoder is
left as imported.
"""
import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402
from adapt import Stacked, TextSet, base_weights, gated, hypernet_for  # noqa: E402
from build import stage  # noqa: E402
from common import ROOT, chunk_texts, log, save_atomic, setup_torch, write_json  # noqa: E402

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"val": "validation", "test": "test"}
NO_DOMAIN = "corpus"  # the pseudo-domain of a corpus without domains
# Budget presets: tokens cached for training (validation and test get eval_tokens each, all domains together),
# optimisation steps and tokens per step of every trained stage (the static LoRA gets the hypernetwork's budget).
# "small" makes a CPU run of a 135M model (vocabulary 49152) take minutes; "full" is the default package's budget.
BUDGETS = {
    "small": {"train_tokens": 16_000, "eval_tokens": 3_000, "steps": 120, "tokens_per_step": 512, "groups_per_step": 4},
    "medium": {"train_tokens": 200_000, "eval_tokens": 20_000, "steps": 400, "tokens_per_step": 2048, "groups_per_step": 8},
    "full": {"train_tokens": None, "eval_tokens": None, "steps": 800, "tokens_per_step": 4096, "groups_per_step": 8},
}
PRIOR_GRID = (0, 16, 64, 256)
THRESHOLD_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# the gate's rule: the highest threshold whose validation cost on the corpus's own domains stays within this factor
GATE_TOLERANCE = 1.01
HYPERNET_PARAMS = 8_000_000  # the largest to_b (hidden x vocab x rank) the automatic hidden width allows
MIN_GROUPS = 10  # a domain with fewer documents (groups) is split inside its documents instead


# --- Corpus --------------------------------------------------------------------------------------------------


def read_corpus(path):
    """[(domain or None, doc id, group, text)] of a corpus folder or JSONL file."""
    path = Path(path)
    if path.is_dir():
        subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        loose = sorted(path.glob("*.txt"))
        if subdirs and loose:
            raise SystemExit(f"{path}: both .txt files and domain folders at the top; put every document in a domain folder, or none")
        docs = []
        if not subdirs:
            for f in loose:
                docs.append((None, f.name, f.name, f.read_text(encoding="utf-8", errors="replace")))
        for d in subdirs:
            for f in sorted(d.rglob("*.txt")):
                rel = f.relative_to(d)
                group = rel.parts[0] if len(rel.parts) > 1 else str(rel)
                docs.append((d.name, str(rel), group, f.read_text(encoding="utf-8", errors="replace")))
    elif path.is_file():
        docs = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record.get("text"), str):
                    raise SystemExit(f"{path}: line {n + 1} has no \"text\" string")
                doc_id = str(record.get("id", n))
                docs.append((record.get("domain"), doc_id, str(record.get("group", doc_id)), record["text"]))
        named = {d is not None for d, *_ in docs}
        if len(named) > 1:
            raise SystemExit(f"{path}: some records have a \"domain\" and some do not")
    else:
        raise SystemExit(f"corpus {path} not found (a folder or a JSONL file)")
    docs = [d for d in docs if d[3].strip()]
    if not docs:
        raise SystemExit(f"corpus {path} has no text")
    return docs


def split_domain(documents, seed, fractions):
    """{split: [(doc id, text)]}: whole groups to one split by a seeded shuffle (data.split_documents); a domain of
    fewer than MIN_GROUPS groups has each document cut instead (its first 80 % of characters to train, the next 10 %
    to validation, the rest to test, each cut moved to the next line break or space), so that a domain of one long
    file still has all three."""
    if len({g for _, g, _ in documents}) >= MIN_GROUPS:
        return data.split_documents(documents, seed, fractions)
    by_split = {s: [] for s in SPLITS}
    for doc_id, _, text in documents:
        cuts = [0]
        for share in (fractions[0], fractions[0] + fractions[1]):
            cuts.append(max(cuts[-1], boundary(text, int(len(text) * share))))
        cuts.append(len(text))
        for s, start, end in zip(SPLITS, cuts, cuts[1:]):
            if text[start:end].strip():
                by_split[s].append((f"{doc_id}#{s}", text[start:end]))
    return by_split


def boundary(text, at):
    """The position after the first line break at or after `at` (within 2000 characters), else after the first space."""
    for mark, reach in (("\n", 2000), (" ", len(text))):
        found = text.find(mark, at, at + reach)
        if found >= 0:
            return found + 1
    return len(text)


def encode(tokenizer_path, texts):
    """Token ids of texts from the service's tokenizer library (no special tokens added, as the server encodes)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        with open(src, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
        done = subprocess.run(["node", str(ROOT / "training/encode_texts.mjs"), str(tokenizer_path), str(src), str(dst)],
                              cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"encoding with {tokenizer_path} failed: {done.stderr.strip()[-800:]}")
        with open(dst, encoding="utf-8") as f:
            ids = [json.loads(line) for line in f]
    if len(ids) != len(texts):
        raise SystemExit(f"the encoder returned {len(ids)} texts for {len(texts)}")
    return ids


def build_corpus(corpus, tokenizer_path, manifest, cfg):
    """{split: (texts, domains)}: each domain's documents split, encoded and cut into pieces, each split and domain
    within its token budget (the budget is shared evenly by the domains), and a summary."""
    docs = read_corpus(corpus)
    with_domains = docs[0][0] is not None
    names = sorted({d for d, *_ in docs}) if with_domains else [NO_DOMAIN]
    tok = manifest["tokenizer"]
    bos = tok["bos_token_id"] if tok.get("add_bos") else None
    excluded = set(manifest.get("features", {}).get("exclude_token_ids", []))
    budgets = {"train": cfg["budget"]["train_tokens"], "val": cfg["budget"]["eval_tokens"], "test": cfg["budget"]["eval_tokens"]}
    length, min_tokens = cfg["texts"]["tokens"], cfg["texts"]["min_tokens"]
    out = {s: ([], []) for s in SPLITS}
    summary = {"corpus": str(Path(corpus).resolve()), "domains": names if with_domains else None, "seed": cfg["seed"],
               "split_fractions": cfg["split_fractions"], "text_tokens": length, "splits": {}}
    for name in names:
        documents = [(doc_id, group, text) for d, doc_id, group, text in docs if (d if with_domains else NO_DOMAIN) == name]
        by_split = split_domain(documents, cfg["seed"], cfg["split_fractions"])
        for split in SPLITS:
            budget = None if budgets[split] is None else max(1, budgets[split] // len(names))
            # characters first (about 8 per token is generous for any BPE), then whole pieces up to the token budget
            taken = data.take_budget(by_split[split], None if budget is None else 8 * budget)
            ids = encode(tokenizer_path, [t for _, t in taken]) if taken else []
            pieces = chunk_texts([[i for i in doc if i not in excluded] for doc in ids], bos, length, min_tokens)
            kept, total = [], 0
            for piece in pieces:
                if budget is not None and total >= budget:
                    break
                kept.append(piece)
                total += len(piece) - 1
            out[split][0].extend(kept)
            out[split][1].extend([name] * len(kept))
            summary["splits"].setdefault(split, {})[name] = {"documents": len(taken), "texts": len(kept), "tokens": total}
        log(f"corpus {name}: " + ", ".join(f"{s} {summary['splits'][s][name]['texts']} texts / {summary['splits'][s][name]['tokens']} tokens" for s in SPLITS))
    for split in SPLITS:
        if not out[split][0]:
            raise SystemExit(f"the corpus gives no {SPLIT_NAMES.get(split, split)} text of at least {min_tokens} tokens")
    return out, summary


def write_npm_corpus(out, domains, chars):
    """The default build's npm corpora (data.SOURCES, cleaned as data.py cleans them) as a CORPUS folder:
    out/<domain>/<document>.txt, and a license family's texts in out/license/<family>/ (one group). With `chars`, each
    domain keeps whole documents of a seeded shuffle up to about that many characters."""
    out = Path(out)
    for domain in domains:
        documents = list(data.SOURCES[domain]())
        random.Random(f"npm-corpus-{domain}").shuffle(documents)
        total = 0
        folder = out / domain
        folder.mkdir(parents=True, exist_ok=True)
        for doc_id, group, text in documents:
            if chars is not None and total >= chars:
                break
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", doc_id) + ".txt"
            path = folder / re.sub(r"[^A-Za-z0-9._-]+", "_", group) / name if group != doc_id else folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            total += len(text)
        log(f"{domain}: {total} characters in {folder}")


# --- Base model ----------------------------------------------------------------------------------------------


def load_base(manifest, checkpoint, device):
    """The package's base as a torch module (.hidden, .embeddings, .head), rebuilt from its Hugging Face checkpoint."""
    source = checkpoint or manifest.get("architecture", {}).get("source", {}).get("path")
    if not source:
        raise SystemExit("the package's manifest names no checkpoint (architecture.source.path); pass --checkpoint HF_DIR")
    from hf_model import load_checkpoint
    if not Path(source).is_dir():
        raise SystemExit(f"checkpoint folder {source} not found (architecture.source.path); pass --checkpoint HF_DIR")
    model = load_checkpoint(Path(source))
    dims, want = model.config_summary["dims"], manifest["dims"]
    for key in ("vocab_size", "d_model", "n_layer"):
        if dims[key] != want[key]:
            raise SystemExit(f"checkpoint {source} has {key} {dims[key]}, the package {want[key]}: not the package's base")
    return model.to(device).eval()


@contextmanager
def default_device(device):
    """Tensors a module creates inside its forward (masks, positions) on `device` too, for a GPU run."""
    if device.type == "cpu":
        yield
        return
    if hasattr(torch, "set_default_device"):
        torch.set_default_device(device)
        try:
            yield
        finally:
            torch.set_default_device("cpu")
    else:
        torch.set_default_tensor_type(torch.cuda.FloatTensor)
        try:
            yield
        finally:
            torch.set_default_tensor_type(torch.FloatTensor)


class OnDevice:
    """A base whose forward runs with `device` as the default device (an imported model makes its masks and
    positions inside hidden()), as TextSet calls it."""

    def __init__(self, model, device):
        self.model, self.device = model, device
        self.embeddings, self.head = model.embeddings, model.head

    def eval(self):
        self.model.eval()
        return self

    def hidden(self, input_ids):
        with default_device(self.device):
            return self.model.hidden(input_ids)


def on(device, obj):
    """Factors, a baseline's tensors, or a module on `device`."""
    if obj is None:
        return None
    if isinstance(obj, torch.nn.Module):
        return obj.to(device)
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(on(device, o) for o in obj)
    if isinstance(obj, dict):
        return {k: on(device, v) for k, v in obj.items()}
    return obj


# --- Settings ------------------------------------------------------------------------------------------------


def auto_hidden(vocab, rank):
    """The hypernetwork's hidden width: 128 (the default package's) unless its to_b (hidden x vocab x rank) would pass
    HYPERNET_PARAMS; then the largest of 64, 32, 16 that fits (SmolLM2's 49152 tokens at rank 4: 32, 6.3M)."""
    for hidden in (128, 64, 32, 16):
        if hidden * vocab * rank <= HYPERNET_PARAMS:
            return hidden
    return 8


def settings(args, manifest):
    budget = dict(BUDGETS[args.budget])
    if args.budget_tokens is not None:
        budget["train_tokens"] = args.budget_tokens
        budget["eval_tokens"] = max(1, args.budget_tokens // 5)
    if args.eval_tokens is not None:
        budget["eval_tokens"] = args.eval_tokens
    steps = args.steps or budget["steps"]
    tokens_per_step = args.tokens_per_step or budget["tokens_per_step"]
    groups = min(budget["groups_per_step"], tokens_per_step)
    vocab = manifest["dims"]["vocab_size"]
    text_tokens = min(manifest["dims"]["context"], args.text_tokens)
    return {
        "name": manifest["name"],
        "seed": args.seed,
        "split_fractions": [0.8, 0.1, 0.1],
        "budget": {"preset": args.budget, "train_tokens": budget["train_tokens"], "eval_tokens": budget["eval_tokens"]},
        "texts": {"tokens": text_tokens, "min_tokens": min(16, text_tokens // 4)},
        "lora": {"rank": args.rank, "scale": 1.0},
        "static": {"lr": 0.01},
        "hypernet": {
            "hidden": args.hidden or auto_hidden(vocab, args.rank), "lr": 0.001, "weight_decay": 0.0,
            "steps": steps, "tokens_per_step": tokens_per_step, "groups_per_step": groups,
            "group_sizes": [1, 2, 4, 8, 16], "train_clusters": 8, "embedding_basis": bool(args.embedding_basis),
            "prefix_context": {"min_tokens": 4}, "on_static": True,
        },
        "eval": {"window": 32, "target_cluster_size": 4, "max_clusters": 8},
        "baselines": bool(args.baselines),
    }


def corpus_fingerprint(corpus):
    """The corpus's path and its files' names and sizes."""
    path = Path(corpus).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.txt"))
    return [str(path)] + [f"{p.relative_to(path) if p != path else p.name}:{p.stat().st_size}" for p in files]


def stage_keys(args, cfg, manifest):
    """A digest per stage of every setting and input its result depends on, its upstream stages' included: a stage
    whose key changed is redone (and with it every stage after it), one whose key is the same is skipped."""
    digest = lambda *parts: hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]  # noqa: E731
    sha = manifest.get("sha256", {})
    keys = {"corpus": digest(corpus_fingerprint(args.corpus), sha.get("tokenizer"), manifest["tokenizer"], manifest.get("features"),
                             cfg["budget"], cfg["texts"], cfg["seed"], cfg["split_fractions"])}
    keys["cache"] = digest(keys["corpus"], sha.get("decoder"), args.checkpoint)
    training = (cfg["lora"], cfg["static"], cfg["hypernet"]["steps"], cfg["hypernet"]["tokens_per_step"])
    keys["static"] = digest(keys["cache"], training)
    keys["hypernet"] = digest(keys["static"], cfg["hypernet"])
    keys["library"] = keys["masks"] = digest(keys["cache"], training)
    keys["choose"] = digest(keys["hypernet"], keys["library"] if cfg["baselines"] else None, cfg["eval"])
    keys["evaluate"] = keys["choose"]
    return keys


# --- Validation choices --------------------------------------------------------------------------------------


def windows_over_static(tables, variant):
    return tables[variant]["chameleon_windows"]["overall"] / tables["static"]["static"]["overall"]


def choose_gate(weights, train, val, static, net, cfg, prompts):
    """The gate's shrinkage prior and threshold, on validation, by rules fixed before looking:

    - prior_tokens: among PRIOR_GRID, the lowest windows / static averaged over the prompt lengths (every context
      admitted);
    - min_similarity: the highest of THRESHOLD_GRID whose windows / static stays within GATE_TOLERANCE of the
      ungated one (same prior) at every prompt length. Validation holds only the corpus's own domains, so a
      threshold can only cost there: the highest one that costs (almost) nothing protects most against contexts
      unlike the corpus, which fall back to the static LoRA. None when even the lowest costs more.
    """
    from evaluate import continuation_variants
    seed = cfg["seed"]
    sweep = {"prior_tokens": {}, "min_similarity": {}}
    # the static LoRA once, each candidate gate's windows (the same windows and k-means for all)
    priors = {"static": (static, None, None),
              **{f"prior {n}": (None, gated(net, train, {"min_similarity": -1.0, "prior_tokens": n}), None) for n in PRIOR_GRID}}
    for p in prompts:
        tables = continuation_variants(weights, val, p, priors, cfg, seed, methods=("static", "chameleon_windows"))
        for n in PRIOR_GRID:
            sweep["prior_tokens"].setdefault(str(n), {})[str(p)] = windows_over_static(tables, f"prior {n}")
    prior = min(PRIOR_GRID, key=lambda n: sum(sweep["prior_tokens"][str(n)].values()))
    log("gate prior sweep (windows / static per prompt length): " + "; ".join(
        f"{n}: " + " / ".join(f"{v:.3f}" for v in sweep["prior_tokens"][str(n)].values()) for n in PRIOR_GRID) + f" -> {prior}")
    thresholds = {"static": (static, None, None),
                  **{str(t): (None, gated(net, train, {"min_similarity": t, "prior_tokens": prior}), None) for t in THRESHOLD_GRID}}
    for p in prompts:
        tables = continuation_variants(weights, val, p, thresholds, cfg, seed, methods=("static", "chameleon_windows"))
        for t in THRESHOLD_GRID:
            sweep["min_similarity"].setdefault(str(t), {})[str(p)] = windows_over_static(tables, str(t))
    ungated = sweep["prior_tokens"][str(prior)]
    passing = [t for t in THRESHOLD_GRID if all(sweep["min_similarity"][str(t)][str(p)] <= GATE_TOLERANCE * ungated[str(p)] for p in prompts)]
    threshold = max(passing) if passing else None
    log("gate threshold sweep: " + "; ".join(f"{t}: " + " / ".join(f"{v:.3f}" for v in sweep["min_similarity"][str(t)].values())
                                             for t in THRESHOLD_GRID) + f" -> {threshold}")
    rule = (f"prior_tokens: the lowest mean windows / static over prompt lengths {list(prompts)} among {list(PRIOR_GRID)}; "
            f"min_similarity: the highest of {list(THRESHOLD_GRID)} within {GATE_TOLERANCE}x of the ungated windows / static at every "
            "prompt length (validation, the corpus's own domains)")
    gate = None if threshold is None else {"min_similarity": threshold, "prior_tokens": prior}
    return gate, {"chosen": gate, "rule": rule, "validation": sweep}


# --- Main ----------------------------------------------------------------------------------------------------


def keep_freed_memory():
    """Big tensors (a step's logits over a 49k vocabulary are 100 MB) from the heap, and freed memory kept for the next
    step, instead of glibc's mmap and munmap of each: a fresh mapping costs a page fault per 4 kB, which took 40 % of a
    static-LoRA step of a 135M model (0.60 -> 0.36 s). glibc only; elsewhere nothing changes."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, ctypes.c_int(2 ** 31 - 1))  # M_MMAP_THRESHOLD
        libc.mallopt(-1, ctypes.c_int(2 ** 31 - 1))  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def main():
    parser = argparse.ArgumentParser(description="Train ChameleonLLM's LM-head adaptation for an imported base package.")
    parser.add_argument("--base", help="package folder written by npm run model:import (adapted in place)")
    parser.add_argument("--corpus", help="folder with one sub-folder of .txt files per domain, a folder of .txt files, or a JSONL of {text, domain}")
    parser.add_argument("--checkpoint", default=None, help="Hugging Face folder of the base (default: the manifest's architecture.source.path)")
    parser.add_argument("--work", default=None, help="work folder of the cached stages (default: training/.cache/adapt-<package name>)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small", help="preset of cached tokens and training steps (default small: minutes for a 135M model on 2 CPU cores)")
    parser.add_argument("--budget-tokens", type=int, default=None, help="training tokens cached (all domains); validation and test get a fifth each")
    parser.add_argument("--eval-tokens", type=int, default=None, help="tokens cached for validation and for test, each")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps of each trained stage")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="tokens per optimisation step")
    parser.add_argument("--text-tokens", type=int, default=256, help="longest text piece (default 256, capped at the package's context)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4; the hypernetwork's generated update has the same)")
    parser.add_argument("--hidden", type=int, default=None, help="hypernetwork hidden width (default: 128, less for a big vocabulary)")
    parser.add_argument("--embedding-basis", action="store_true", help="hypernetwork B with an LM-head basis term (stores the head in hypernet.onnx)")
    parser.add_argument("--baselines", action="store_true", help="also train the LoRA library and LoRA*Mask (needs two domains or more)")
    parser.add_argument("--final", action="store_true", help="also score the test split (once, after every choice was made on validation)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (the default: cuda where torch sees a GPU)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the splits, initialisations and sampling (default 1234)")
    parser.add_argument("--until", default=None, help="stop after this stage")
    parser.add_argument("--write-npm-corpus", metavar="DIR", default=None, help="write the default build's npm corpora as a CORPUS folder and exit")
    parser.add_argument("--domains", default="sotu,moby_dick,email,license", help="with --write-npm-corpus: the domains to write")
    parser.add_argument("--chars-per-domain", type=int, default=None, help="with --write-npm-corpus: about this many characters per domain")
    args = parser.parse_args()
    if args.write_npm_corpus:
        write_npm_corpus(args.write_npm_corpus, [d for d in args.domains.split(",") if d], args.chars_per_domain)
        return
    if not args.base or not args.corpus:
        parser.error("--base and --corpus are required (or --write-npm-corpus DIR)")
    keep_freed_memory()
    adapt(args)


def adapt(args):
    started = time.time()
    package = Path(args.base)
    if not (package / "manifest.json").exists():
        raise SystemExit(f"{package}: no manifest.json (write a base package with npm run model:import)")
    from export import strip_adaptation
    manifest, _ = strip_adaptation(json.loads((package / "manifest.json").read_text()))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no GPU here (use --device cpu or auto)")
    cfg = settings(args, manifest)
    setup_torch(cfg["seed"])
    work = Path(args.work) if args.work else ROOT / "training/.cache" / f"adapt-{re.sub(r'[^A-Za-z0-9._-]+', '_', cfg['name'])}"
    work.mkdir(parents=True, exist_ok=True)
    keys = stage_keys(args, cfg, manifest)

    def current(name, path):
        """stage()'s test: the result exists and was made with today's settings (its key is written beside it)."""
        marker = work / f"{name}.key"
        return lambda: path.exists() and marker.exists() and marker.read_text() == keys[name]

    def made(name):
        (work / f"{name}.key").write_text(keys[name])

    write_json({"cfg": cfg, "base": str(package.resolve()), "corpus": str(Path(args.corpus).resolve())}, work / "settings.json")
    log(f"adapting {package} on {args.corpus} ({args.budget} budget, device {device}); work folder {work}")
    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    dims = manifest["dims"]
    base_cache = {}

    def base():
        if "model" not in base_cache:
            base_cache["model"] = load_base(manifest, args.checkpoint, device)
        return base_cache["model"]

    def weights():
        """The base's embeddings (features) and LM head, on the device."""
        if "weights" not in base_cache:
            base_cache["weights"] = base_weights(base())
        return base_cache["weights"]

    def sets():
        if "sets" not in base_cache:
            base_cache["sets"] = torch.load(work / "textsets.pt")
        return base_cache["sets"]

    def with_domains():
        return json.loads((work / "corpus.json").read_text())["domains"] is not None

    @stage("corpus", work / "corpus.pt", timings, current("corpus", work / "corpus.pt"))
    def run_corpus():
        splits, summary = build_corpus(args.corpus, package / manifest["tokenizer"]["file"], manifest, cfg)
        write_json(summary, work / "corpus.json")
        save_atomic(splits, work / "corpus.pt")
        made("corpus")

    @stage("cache", work / "textsets.pt", timings, current("cache", work / "textsets.pt"))
    def run_cache():
        splits = torch.load(work / "corpus.pt")
        model = OnDevice(base(), device)
        out = {}
        for split in SPLITS:
            texts, domains = splits[split]
            log(f"caching hidden states of {SPLIT_NAMES.get(split, split)}: {len(texts)} texts, {sum(len(t) - 1 for t in texts)} tokens")
            out[split] = TextSet(model, texts, domains, max_tokens=4096, checkpoint=work / f"cache_{split}.{keys['cache']}.partial.pt")
        save_atomic(out, work / "textsets.pt")
        made("cache")

    def trained(name):
        """The stage that trains one part on the cached training set with adapt.train_<name> and saves it."""
        path = work / f"{name}.pt"

        @stage(name, path, timings, current(name, path))
        def run():
            import adapt
            save_atomic(getattr(adapt, f"train_{name}")(weights(), sets()["train"], cfg, cfg["seed"]), path)
            made(name)
        return run

    run_static = trained("static")

    @stage("hypernet", work / "hypernet.pt", timings, current("hypernet", work / "hypernet.pt"))
    def run_hypernet():
        from adapt import train_hypernet
        net = train_hypernet(weights(), sets()["train"], cfg, cfg["seed"], torch.load(work / "static.pt"))
        save_atomic({k: v.cpu() for k, v in net.state_dict().items()}, work / "hypernet.pt")
        made("hypernet")

    run_library = trained("library")
    run_masks = trained("masks")

    def network():
        """The trained Chameleon-on-static network (eval mode, on the device)."""
        net = Stacked(hypernet_for(weights(), cfg), torch.load(work / "static.pt"))
        net.load_state_dict(torch.load(work / "hypernet.pt"))
        return net.to(device).eval()

    def prompt_lengths():
        from evaluate import PROMPT_LENGTHS
        return [p for p in PROMPT_LENGTHS if p <= cfg["texts"]["tokens"] // 2]

    def target_prompt():
        prompts = prompt_lengths()
        return 64 if 64 in prompts else prompts[-1]

    def baseline_tensors():
        if not baselines():
            return None, None
        return torch.load(work / "library.pt"), torch.load(work / "masks.pt")

    @stage("choose", work / "choices.json", timings, current("choose", work / "choices.json"))
    def run_choose():
        """Every choice on validation: the gate (with domains) and the selectors' temperatures (with the baselines)."""
        from evaluate import select_temperatures
        s = sets()
        static = on(device, torch.load(work / "static.pt"))
        choices = {"gate": None, "gate_selection": None, "temperatures": None, "temperature_selection": None}
        if with_domains():
            choices["gate"], choices["gate_selection"] = choose_gate(weights(), s["train"], s["val"], static, network(), cfg, prompt_lengths())
        else:
            log("no domains: no gate (clusters come from k-means alone)")
        library, masks = baseline_tensors()
        if library is not None:
            choices["temperatures"], choices["temperature_selection"] = select_temperatures(
                weights(), s["val"], on(device, library), on(device, masks), cfg, target_prompt())
        write_json(choices, work / "choices.json")
        made("choose")

    def evaluated():
        """Made with today's settings, and with test when --final asks for it (test is scored once: a rerun with
        --final after that is skipped)."""
        path = work / "eval.json"
        return current("evaluate", path)() and (not args.final or "test" in json.loads(path.read_text()))

    @stage("evaluate", work / "eval.json", timings, evaluated)
    def run_evaluate():
        """Validation, and test once with --final (a rerun with --final after that scores nothing again)."""
        from evaluate import (LABELS, baseline_adapters, continuation_markdown, continuation_tables, evaluate_all,
                              examples_markdown, examples_table, markdown_table)
        s = sets()
        choices = json.loads((work / "choices.json").read_text())
        static = on(device, torch.load(work / "static.pt"))
        net = gated(network(), s["train"], choices["gate"])
        library, masks = baseline_tensors()
        selectors = baseline_adapters(on(device, library), on(device, masks), choices["temperatures"]) if library is not None else None
        prompts, target_p = prompt_lengths(), target_prompt()
        splits = ("val", "test") if args.final else ("val",)
        echo, continuation, examples = {}, {}, {}
        for split in splits:
            name = SPLIT_NAMES[split]
            log(f"evaluating on {name}")
            echo[name] = evaluate_all(weights(), {"M": s[split]}, static, net, cfg, cfg["seed"], selectors)
            continuation[name] = continuation_tables(weights(), s[split], prompts, static, net, cfg, cfg["seed"], "embedding", selectors)
            examples[name] = examples_table(weights(), s["train"], s[split], target_p, static, net, cfg, cfg["seed"])
        final = SPLIT_NAMES[splits[-1]]
        at = continuation[final][target_p]
        domains = table_domains(echo[final])
        report = {
            "metric": "token-weighted perplexity; primary: prompt -> continuation (the adapter sees the first P tokens "
                      "of each text, the rest is scored); secondary: echo (every position scored, the text's own tokens in its context)",
            "texts": f"documents cut into texts of at most {cfg['texts']['tokens']} tokens (" +
                     ("BOS first)" if manifest["tokenizer"].get("add_bos") else "the first token leading: no BOS)"),
            "corpus": json.loads((work / "corpus.json").read_text()),
            "eval": cfg["eval"],
            "labels": LABELS,
            "gate": choices["gate"],
            "gate_selection": choices["gate_selection"],
            "continuation": continuation,
            "selector_temperatures": {"chosen": choices["temperatures"], "validation": choices["temperature_selection"]} if library is not None else None,
            "examples": examples,
            "examples_markdown": examples_markdown(examples[final]),
            "storage_bytes": storage_bytes(work, library is not None),
            **echo,
            "summary": {"split": final, "prompt_tokens": target_p,
                        "windows_over_static": round(at["chameleon_windows"]["overall"] / at["static"]["overall"], 4),
                        "request_over_static": round(at["chameleon_request"]["overall"] / at["static"]["overall"], 4),
                        "static_over_base": round(at["static"]["overall"] / at["base"]["overall"], 4)},
            "table_markdown": markdown_table(echo[final], domains, [], "overall"),
            "continuation_markdown": continuation_markdown(continuation[final]),
        }
        write_json(report, work / "eval.json")
        made("evaluate")
        print(f"{final}, echo:\n{report['table_markdown']}\n{final}, prompt -> continuation:\n{report['continuation_markdown']}")
        log(f"chameleon_windows / static on {final}, {target_p}-token prompts: {report['summary']['windows_over_static']:.4f}; "
            f"static / base {report['summary']['static_over_base']:.4f}")

    def run_export():
        """Writes the adaptation into the package (always: cheap, and the package may have been re-imported)."""
        from evaluate import plot
        from export import sha256, write_adaptation
        log("stage export: start")
        t0 = time.time()
        s = sets()
        choices = json.loads((work / "choices.json").read_text())
        report = json.loads((work / "eval.json").read_text())
        library, masks = baseline_tensors()
        current, old_files = strip_adaptation(json.loads((package / "manifest.json").read_text()))
        net = gated(network(), s["train"], choices["gate"])
        adaptation = write_adaptation(package, net, torch.load(work / "static.pt"), cfg, dims, library, masks, choices["temperatures"])
        for key, name in old_files.items():  # files of an earlier adaptation that this one does not have (e.g. no --baselines now)
            if key not in adaptation["files"] and (package / name).exists():
                (package / name).unlink()
        write_json(report, package / "eval.json")
        final = "test" if "test" in report else "validation"
        plot(report[final], report["continuation"][final], [], table_domains(report[final]), final, package / "eval.png")
        files = {**current["files"], **adaptation["files"], "eval": "eval.json"}
        sections = adaptation["sections"]
        stage_seconds = {**timings, "export": round(time.time() - t0, 1)}
        updated = {
            **current,
            "lora": sections["lora"],
            "files": files,
            "sha256": {**current.get("sha256", {}), **{k: sha256(package / v) for k, v in adaptation["files"].items()}},
            "tensors": {**current["tensors"], **adaptation["tensors"]},
            "hypernet": sections["hypernet"],
            **{k: sections[k] for k in ("library", "masks") if k in sections},
            "data": report["corpus"],
            "training": {"tool": "training/adapt_package.py", "config": cfg, "device": str(device), "stage_seconds": stage_seconds,
                         "choices": {"gate": choices["gate_selection"], "selector_temperatures": report.get("selector_temperatures")}},
            "eval": {k: report[k] for k in ("metric", "validation", "test", "summary", "storage_bytes") if k in report},
        }
        tmp = package / "manifest.json.tmp"
        write_json(updated, tmp)
        os.replace(tmp, package / "manifest.json")
        timings["export"] = stage_seconds["export"]
        log(f"stage export: {timings['export']} s")
        log(f"package {package} adapted: hypernet rank {adaptation['rank']}, gate {choices['gate']}, "
            f"{'library and masks' if library is not None else 'no baselines'}; serve it with MODEL_DIR={package} npm start")

    stages = [("corpus", run_corpus), ("cache", run_cache), ("static", run_static), ("hypernet", run_hypernet)]
    stages += [("library", run_library), ("masks", run_masks)]
    stages += [("choose", run_choose), ("evaluate", run_evaluate), ("export", run_export)]
    def baselines():
        return args.baselines and with_domains_count(work) >= 2

    for name, fn in stages:
        if name in ("library", "masks") and not baselines():
            if args.baselines and name == "library":
                log("--baselines needs a corpus of two domains or more: no library or masks")
            continue
        fn()
        write_json(timings, timings_path)
        if args.until == name:
            break
    log(f"done in {time.time() - started:.0f} s")


def with_domains_count(work):
    names = json.loads((work / "corpus.json").read_text())["domains"]
    return 0 if names is None else len(names)


def table_domains(echo):
    return [d for d in echo["base"]["M"] if d not in ("overall", "tokens")]


def storage_bytes(work, baselines):
    """Bytes each adaptation method stores (float32)."""
    count = lambda tensors: 4 * sum(t.numel() for t in tensors)  # noqa: E731
    out = {"static": count(torch.load(work / "static.pt")), "hypernet": count(torch.load(work / "hypernet.pt").values())}
    if baselines:
        library, masks = torch.load(work / "library.pt"), torch.load(work / "masks.pt")
        out["library"] = count([library["lora_a"], library["lora_b"], library["centroids"]])
        out["masks"] = count([masks[k] for k in ("lora_a", "lora_b", "mask_a", "mask_b", "centroids")])
    return out


if __name__ == "__main__":
    main()
