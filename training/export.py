"""Writes the model package: ONNX graphs, raw tensors, tokenizer, equivalence fixture and manifest."""
import base64
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch

from common import write_json

OPSET = 14


class DecoderGraph(torch.nn.Module):
    def __init__(self, model, scale):
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, input_ids, position_ids, attention_mask, past_keys, past_values, lora_a, lora_b, cluster_index):
        return self.model.forward_cached(input_ids, position_ids, attention_mask, past_keys, past_values,
                                         lora_a, lora_b, cluster_index, self.scale)


def decoder_signature(dims, rank):
    L, H, Dh, V, d = dims["n_layer"], dims["n_head"], dims["head_dim"], dims["vocab_size"], dims["d_model"]
    return {
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
            {"name": "position_ids", "dtype": "int64", "shape": ["batch", "seq"]},
            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "total"]},
            {"name": "past_keys", "dtype": "float32", "shape": [L, "batch", H, "past", Dh]},
            {"name": "past_values", "dtype": "float32", "shape": [L, "batch", H, "past", Dh]},
            {"name": "lora_a", "dtype": "float32", "shape": ["clusters", rank, d]},
            {"name": "lora_b", "dtype": "float32", "shape": ["clusters", V, rank]},
            {"name": "cluster_index", "dtype": "int64", "shape": ["batch"]},
        ],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": ["batch", "seq", V]},
            {"name": "present_keys", "dtype": "float32", "shape": [L, "batch", H, "total", Dh]},
            {"name": "present_values", "dtype": "float32", "shape": [L, "batch", H, "total", Dh]},
        ],
    }


def hypernet_signature(dims, rank):
    d, V = dims["d_model"], dims["vocab_size"]
    return {
        "inputs": [{"name": "context", "dtype": "float32", "shape": ["clusters", d]}],
        "outputs": [
            {"name": "lora_a", "dtype": "float32", "shape": ["clusters", rank, d]},
            {"name": "lora_b", "dtype": "float32", "shape": ["clusters", V, rank]},
        ],
    }


def dynamic_axes(signature):
    axes = {}
    for spec in signature["inputs"] + signature["outputs"]:
        named = {i: n for i, n in enumerate(spec["shape"]) if isinstance(n, str)}
        if named:
            axes[spec["name"]] = named
    return axes


def export_onnx(module, args, signature, path):
    """Constant folding stays off: it would store a transposed copy of the tied embedding for the LM head (4 MB
    more on disk); ONNX Runtime folds that transpose in memory when it loads the session."""
    torch.onnx.export(
        module, args, str(path), opset_version=OPSET, do_constant_folding=False,
        input_names=[s["name"] for s in signature["inputs"]],
        output_names=[s["name"] for s in signature["outputs"]],
        dynamic_axes=dynamic_axes(signature),
    )
    onnx.checker.check_model(onnx.load(str(path)))


def write_tensor(tensor, path):
    path.write_bytes(tensor.detach().contiguous().numpy().astype("<f4").tobytes())


def empty_cache(dims, batch):
    return torch.zeros(dims["n_layer"], batch, dims["n_head"], 0, dims["head_dim"])


def encode_array(t):
    return {"shape": list(t.shape), "data_base64": base64.b64encode(t.detach().numpy().astype("<f4").tobytes()).decode()}


def equivalence_fixture(model, dims, adapters, scale, prompts, decode_steps):
    """A left-padded batch mixing adapters: prefill, then greedy KV-cache steps; PyTorch logits for each run."""
    lora_a, lora_b = adapters
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    positions = torch.tensor([[0] * (width - len(p)) + list(range(len(p))) for p in prompts])
    cluster_index = torch.arange(len(prompts)) % lora_a.shape[0]
    keys = values = empty_cache(dims, len(prompts))
    steps, expected = [], []
    with torch.no_grad():
        for step in range(decode_steps + 1):
            logits, keys, values = model.forward_cached(ids, positions, mask, keys, values, lora_a, lora_b, cluster_index, scale)
            steps.append({"input_ids": ids.tolist(), "position_ids": positions.tolist(), "attention_mask": mask.tolist(),
                          "cluster_index": cluster_index.tolist()})
            expected.append(encode_array(logits))
            ids = logits[:, -1].argmax(-1, keepdim=True)
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=1)
    return {"steps": steps, "lora_a": encode_array(lora_a), "lora_b": encode_array(lora_b), "expected_logits": expected}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_package(out, model, hypernet, static, tokenizer_path, cfg, eos_id, fixture_prompts, extra):
    out.mkdir(parents=True, exist_ok=True)
    m = model.config
    dims = {**m, "head_dim": m["d_model"] // m["n_head"]}
    rank, scale = cfg["lora"]["rank"], cfg["lora"]["scale"]
    model.eval()
    hypernet.eval()
    dec_sig, hyp_sig = decoder_signature(dims, rank), hypernet_signature(dims, rank)

    batch, seq, past = 2, 3, 2
    dummy = (
        torch.randint(0, m["vocab_size"], (batch, seq)), torch.arange(seq).repeat(batch, 1) + past,
        torch.ones(batch, past + seq, dtype=torch.long),
        torch.zeros(m["n_layer"], batch, m["n_head"], past, dims["head_dim"]),
        torch.zeros(m["n_layer"], batch, m["n_head"], past, dims["head_dim"]),
        torch.zeros(3, rank, m["d_model"]), torch.zeros(3, m["vocab_size"], rank), torch.tensor([0, 2]),
    )
    export_onnx(DecoderGraph(model, scale), dummy, dec_sig, out / "decoder.onnx")
    export_onnx(hypernet, (torch.randn(2, m["d_model"]),), hyp_sig, out / "hypernet.onnx")

    write_tensor(model.wte.weight, out / "embeddings.bin")
    write_tensor(static[0], out / "static_lora_a.bin")
    write_tensor(static[1], out / "static_lora_b.bin")
    shutil.copyfile(tokenizer_path, out / "tokenizer.json")

    with torch.no_grad():
        context = torch.nn.functional.normalize(model.wte.weight[torch.tensor(fixture_prompts[-1][1:])].mean(0, keepdim=True), dim=-1)
        hyper_a, hyper_b = hypernet(context)
    adapters = (torch.cat([torch.zeros_like(static[0]), static[0], hyper_a]), torch.cat([torch.zeros_like(static[1]), static[1], hyper_b]))
    (out / "equivalence.json").write_text(json.dumps(equivalence_fixture(model, dims, adapters, scale, fixture_prompts, 3)))

    files = {"decoder": "decoder.onnx", "hypernet": "hypernet.onnx", "tokenizer": "tokenizer.json",
             "embeddings": "embeddings.bin", "static_lora_a": "static_lora_a.bin", "static_lora_b": "static_lora_b.bin",
             "equivalence": "equivalence.json", "eval": "eval.json"}
    manifest = {
        "format": "chameleon-package/1",
        "name": cfg["name"],
        "dims": dims,
        "lora": {"rank": rank, "scale": scale, "adapted": "lm_head"},
        "tokenizer": {"file": "tokenizer.json", "eos_token": "<|endoftext|>", "eos_token_id": eos_id, "bos_token_id": eos_id, "add_bos": True},
        "features": {"kind": "l2_normalised_mean_token_embedding", "exclude_token_ids": [eos_id]},
        "files": files,
        "sha256": {k: sha256(out / v) for k, v in files.items() if (out / v).exists() and k != "eval"},
        "tensors": {
            "embeddings": {"file": "embeddings.bin", "dtype": "float32", "shape": [m["vocab_size"], m["d_model"]]},
            "static_lora_a": {"file": "static_lora_a.bin", "dtype": "float32", "shape": list(static[0].shape)},
            "static_lora_b": {"file": "static_lora_b.bin", "dtype": "float32", "shape": list(static[1].shape)},
        },
        "decoder": dec_sig,
        "hypernet": {**hyp_sig, "hidden": cfg["hypernet"]["hidden"]},
        "onnx_opset": OPSET,
        **extra,
    }
    write_json(manifest, out / "manifest.json")
    return manifest
