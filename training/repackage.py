"""Re-exports a model package in the current format from the weights in its own files, without retraining.

    python3 training/repackage.py models/default

The base model and the hypernetwork are read back from the package's ONNX initializers (exported without
constant folding, so they keep their PyTorch names), the static factors from their raw files; the package is
then written again by export.py with its manifest's data, training and evaluation records kept.
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export import export_package  # noqa: E402
from adapt import Gated, Stacked  # noqa: E402
from model import GPT, HyperNetwork  # noqa: E402


def initializers(path, prefix=""):
    graph = onnx.load(str(path)).graph
    return {i.name[len(prefix):]: torch.from_numpy(numpy_helper.to_array(i).copy())
            for i in graph.initializer if i.name.startswith(prefix)}


def fixture_prompts(fixture):
    """The prompts of an equivalence fixture, in either format (v1: left-padded prefill with a mask)."""
    if "prompts" in fixture:
        return fixture["prompts"]
    first = fixture["steps"][0]
    return [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(first["input_ids"], first["attention_mask"])]


def read_tensor(package, manifest, name):
    spec = manifest["tensors"][name]
    data = np.fromfile(package / spec["file"], dtype="<f4").reshape(spec["shape"])
    return torch.from_numpy(data.copy())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("package", type=Path)
    args = parser.parse_args()
    package = args.package
    manifest = json.loads((package / "manifest.json").read_text())
    cfg = manifest["training"]["config"]
    dims = manifest["dims"]

    model = GPT(dims["vocab_size"], dims["d_model"], dims["n_layer"], dims["n_head"], dims["context"])
    model.load_state_dict(initializers(package / manifest["files"]["decoder"], "model."))
    model.eval()
    weights = initializers(package / manifest["files"]["hypernet"])
    static = (read_tensor(package, manifest, "static_lora_a"), read_tensor(package, manifest, "static_lora_b"))
    on_static = "static_a" in weights  # Chameleon on top of the static LoRA (format 3): its module is Stacked(net)
    own = {k[len("net."):]: v for k, v in weights.items() if k.startswith("net.")} if on_static else weights
    hypernet = HyperNetwork(dims["d_model"], dims["vocab_size"], manifest["lora"]["rank"], manifest["hypernet"]["hidden"], own.get("basis"))
    hypernet.load_state_dict(own)
    if on_static:
        hypernet = Stacked(hypernet, (weights["static_a"], weights["static_b"]))
    gate = manifest["hypernet"].get("gate")
    if gate is not None:
        hypernet = Gated(hypernet, read_tensor(package, manifest, "gate_centroids"), gate["min_similarity"], gate["names"],
                         gate.get("prior_tokens", 0))
    hypernet.eval()
    library = None if "library" not in manifest else {
        "names": manifest["library"]["names"], **{k: read_tensor(package, manifest, f"library_{k}") for k in ("lora_a", "lora_b", "centroids")}}
    masks = None if "masks" not in manifest else {
        "names": manifest["masks"]["names"], **{k: read_tensor(package, manifest, f"masks_{k}") for k in ("lora_a", "lora_b", "mask_a", "mask_b", "centroids")}}
    temperatures = {"library_weighted": manifest.get("library", {}).get("temperature"), "masks": manifest.get("masks", {}).get("temperature")}
    prompts = fixture_prompts(json.loads((package / manifest["files"]["equivalence"]).read_text()))
    extra = {k: manifest[k] for k in ("data", "training", "eval") if k in manifest}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = Path(tmp) / "tokenizer.json"
        shutil.copyfile(package / manifest["files"]["tokenizer"], tokenizer)
        written = export_package(package, model, hypernet, static, tokenizer, cfg, manifest["tokenizer"]["eos_token_id"], prompts, extra,
                                 library, masks, {k: v for k, v in temperatures.items() if v is not None})
    print(f"{package}: re-exported as {written['format']}")


if __name__ == "__main__":
    main()
