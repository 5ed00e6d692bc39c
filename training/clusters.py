"""Chooses the service's clustering (TARGET_CLUSTER_SIZE, MAX_CLUSTERS) for a trained build, on validation only.

    python3 training/clusters.py --config training/configs/default.json

Loads the build's static LoRA and hypernetwork (`build.py --until hypernet` first) and scores Chameleon in windows of
32 on the prompt -> continuation metric for each setting; the hypernetwork is not retrained (the setting only changes
how windows are cut into clusters). Results go to <work>/clusters.json.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapt import Stacked  # noqa: E402
from common import ROOT, log, open_build, write_json  # noqa: E402
from evaluate import PROMPT_LENGTHS, continuation_tables  # noqa: E402
from model import HyperNetwork  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "training/configs/default.json"))
    parser.add_argument("--settings", default="2:16,4:8,8:4,16:2", help="target_cluster_size:max_clusters pairs")
    args = parser.parse_args()
    cfg, work, base, sets = open_build(args.config)
    wte = base.wte.weight.detach()
    static = torch.load(work / "static.pt")
    m = cfg["model"]
    net = HyperNetwork(m["d_model"], m["vocab_size"], cfg["lora"]["rank"], cfg["hypernet"]["hidden"])
    if cfg["hypernet"].get("on_static"):
        net = Stacked(net, static)
    net.load_state_dict(torch.load(work / "hypernet.pt"))
    net.eval()
    prompts = [p for p in PROMPT_LENGTHS if p <= m["context"] // 2]
    results = {}
    for setting in args.settings.split(","):
        target, most = (int(x) for x in setting.split(":"))
        c = {**cfg, "eval": {**cfg["eval"], "target_cluster_size": target, "max_clusters": most}}
        tables = continuation_tables(wte, sets["M_val"], prompts, static, net, c, cfg["seed"])
        results[setting] = {str(p): {k: t[k]["overall"] for k in ("static", "chameleon_windows", "chameleon_request")} for p, t in tables.items()}
        log(f"target {target}, at most {most} clusters: " + ", ".join(
            f"{p}: windows/static {r['chameleon_windows'] / r['static']:.3f}, windows/request {r['chameleon_windows'] / r['chameleon_request']:.3f}"
            for p, r in results[setting].items()))
    write_json(results, work / "clusters.json")


if __name__ == "__main__":
    main()
