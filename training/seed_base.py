"""Seeds a build's work folder with the shipped base model instead of pretraining it again (~45 min on 2 cores).

    python3 training/seed_base.py --config training/configs/default.json --package models/default

Only valid when the work folder's tokenizer is the package's, byte for byte (checked here), since the base's
embeddings are indexed by that tokenizer's ids. Run `build.py --until tokenizer` first.
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, save_atomic  # noqa: E402
from model import GPT  # noqa: E402
from repackage import initializers  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "training/configs/default.json"))
    parser.add_argument("--package", type=Path, default=ROOT / "models/default")
    args = parser.parse_args()
    work = ROOT / "training/.cache" / json.loads(Path(args.config).read_text())["name"]
    manifest = json.loads((args.package / "manifest.json").read_text())
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (work / "tokenizer.json", args.package / manifest["files"]["tokenizer"])]
    if digest[0] != digest[1]:
        raise SystemExit("the work folder's tokenizer differs from the package's: pretrain instead")
    d = manifest["dims"]
    model = GPT(d["vocab_size"], d["d_model"], d["n_layer"], d["n_head"], d["context"])
    model.load_state_dict(initializers(args.package / manifest["files"]["decoder"], "model."))
    save_atomic({"model": model.state_dict(), "config": model.config, "history": manifest["training"]["pretrain_history"]}, work / "base.pt")
    print(f"{work / 'base.pt'} seeded from {args.package} (tokenizer sha256 {digest[0][:12]})")


if __name__ == "__main__":
    main()
