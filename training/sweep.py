"""Chooses adaptation settings on the validation split (never on test).

    python3 training/sweep.py --config training/configs/default.json

Trains the static LoRA and the hypernetwork for each setting on the cached hidden states of the build's work
folder (run `build.py --until cache` first) and prints validation perplexities; results go to sweep.json.
"""
import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapt import train_hypernet, train_static  # noqa: E402
from common import ROOT, log, open_build, write_json  # noqa: E402
from evaluate import held_out_context, perplexities  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "training/configs/default.json"))
    parser.add_argument("--ranks", default="4,8")
    parser.add_argument("--train-clusters", default="4,16")
    parser.add_argument("--hidden", default="128")
    parser.add_argument("--embedding-basis", default="0", help="comma list of 0/1")
    parser.add_argument("--prefix-context", type=int, default=0, help="train on contexts from random prefixes of at least this many tokens (0: whole texts)")
    parser.add_argument("--steps-fraction", type=float, default=0.5)
    parser.add_argument("--eval-clusters", default="2:16,4:8,8:4", help="max_clusters:target_cluster_size pairs")
    args = parser.parse_args()
    cfg, work, base, sets = open_build(args.config)
    wte = base.wte.weight.detach()
    val = {"M": sets["M_val"], "P": sets["P_val"]}
    results_path = work / "sweep.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {json.dumps(r["setting"], sort_keys=True) for r in results}
    for rank, clusters, hidden, basis in itertools.product(
        [int(x) for x in args.ranks.split(",")], [int(x) for x in args.train_clusters.split(",")], [int(x) for x in args.hidden.split(",")],
        [bool(int(x)) for x in args.embedding_basis.split(",")],
    ):
        c = copy.deepcopy(cfg)
        c["lora"]["rank"] = rank
        c["hypernet"]["train_clusters"] = clusters
        c["hypernet"]["hidden"] = hidden
        c["hypernet"]["embedding_basis"] = basis
        if args.prefix_context:
            c["hypernet"]["prefix_context"] = {"min_tokens": args.prefix_context}
        c["hypernet"]["steps"] = int(c["hypernet"]["steps"] * args.steps_fraction)
        c["static"]["steps"] = int(c["static"]["steps"] * args.steps_fraction)
        setting = {"rank": rank, "train_clusters": clusters, "hidden": hidden, "embedding_basis": basis, "steps": c["hypernet"]["steps"],
                   "prefix_context": args.prefix_context}
        if json.dumps(setting, sort_keys=True) in done:
            continue
        started = time.time()
        static = train_static(wte, sets["M_train"], c, c["seed"])
        net = train_hypernet(wte, sets["M_train"], c, c["seed"])
        row = {"setting": setting, "static": {k: perplexities(wte, ts, "static", static, net, c, c["seed"]) for k, ts in val.items()}}
        for pair in args.eval_clusters.split(","):
            max_k, target = (int(x) for x in pair.split(":"))
            c["eval"]["max_clusters"], c["eval"]["target_cluster_size"] = max_k, target
            for method in ("chameleon_windows", "chameleon_request", "chameleon_oracle"):
                key = method if method != "chameleon_windows" else f"{method}_k{max_k}"
                if key in row:
                    continue
                row[key] = {k: perplexities(wte, ts, method, static, net, c, c["seed"]) for k, ts in val.items()}
        row["held_out_context"] = held_out_context(wte, sets["M_val"], static, net, c, c["seed"])
        row["seconds"] = round(time.time() - started, 1)
        results.append(row)
        write_json(results, results_path)
        s = row["static"]["M"]["overall"]
        log(f"{setting}: static {s:.2f} | " + " | ".join(
            f"{k} {v['M']['overall']:.2f} ({v['M']['overall'] / s:.3f}x) P {v['P']['overall']:.2f}" for k, v in row.items() if k.startswith("chameleon"))
            + " | held-out context: " + ", ".join(f"{k} {v['overall']:.2f}" for k, v in row["held_out_context"].items()))


if __name__ == "__main__":
    main()
