"""Writes the model package: ONNX graphs, raw tensors, tokenizer, equivalence fixture and manifest."""
import base64
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch

from adapt import Gated
from common import write_json

OPSET = 14


FORMAT = "chameleon-package/3"


class DecoderGraph(torch.nn.Module):
    """forward_slots with the per-layer caches as separate inputs (past_key_0, past_value_0, ...), so that the
    server can hand ONNX Runtime a contiguous run of cache slots of each layer without copying it."""

    def __init__(self, model, scale):
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, input_ids, position_ids, past_length, lora_a, lora_b, cluster_index, lora_scale, logits_index, *caches):
        pairs = [(caches[2 * i], caches[2 * i + 1]) for i in range(len(caches) // 2)]
        return self.model.forward_slots(input_ids, position_ids, past_length, pairs, lora_a, lora_b, cluster_index,
                                        lora_scale, logits_index, self.scale)



# The trained model's chat template (docs/chat.md): plain "User:" / "Assistant:" turns, a system message as a
# leading paragraph, each earlier answer closed by the end-of-text token.
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}"
                 "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
                 "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
                 "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}{{ eos_token }}\n"
                 "{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}Assistant:{% endif %}")

def cache_input_names(n_layer):
    return [name for i in range(n_layer) for name in (f"past_key_{i}", f"past_value_{i}")]


def decoder_signature(dims):
    # the cache holds the key/value heads, fewer than the query heads under grouped-query attention
    L, H, Dh, V, d = dims["n_layer"], dims.get("n_kv_head", dims["n_head"]), dims["head_dim"], dims["vocab_size"], dims["d_model"]
    return {
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
            {"name": "position_ids", "dtype": "int64", "shape": ["batch", "seq"]},
            {"name": "past_length", "dtype": "int64", "shape": ["batch"]},
            {"name": "lora_a", "dtype": "float32", "shape": ["clusters", "rank", d]},
            {"name": "lora_b", "dtype": "float32", "shape": ["clusters", V, "rank"]},
            {"name": "cluster_index", "dtype": "int64", "shape": ["batch"]},
            {"name": "lora_scale", "dtype": "float32", "shape": ["batch"]},
            {"name": "logits_index", "dtype": "int64", "shape": ["positions"]},
        ] + [{"name": name, "dtype": "float32", "shape": ["batch", H, "cache", Dh]} for name in cache_input_names(L)],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": ["positions", V]},
            {"name": "present_keys", "dtype": "float32", "shape": [L, "batch", H, "seq", Dh]},
            {"name": "present_values", "dtype": "float32", "shape": [L, "batch", H, "seq", Dh]},
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
    # by path: a graph over 2 GB keeps its weights in external files, which an in-memory check cannot take
    onnx.checker.check_model(str(path))


def write_tensor(tensor, path):
    path.write_bytes(tensor.detach().contiguous().numpy().astype("<f4").tobytes())


def encode_array(t):
    return {"shape": list(t.shape), "data_base64": base64.b64encode(t.detach().numpy().astype("<f4").tobytes()).decode()}


def pad_rank(a, b, rank):
    """Factors of a lower rank written at a higher one: the extra rank rows of A and columns of B are zero, so the
    update is exactly the same."""
    extra = rank - a.shape[1]
    if extra == 0:
        return a, b
    return (torch.cat([a, torch.zeros(a.shape[0], extra, a.shape[2])], 1), torch.cat([b, torch.zeros(b.shape[0], b.shape[1], extra)], 2))


def equivalence_fixture(model, dims, adapters, scale, prompts, decode_steps, chunk=4):
    """What the server does, in PyTorch: each row owns a cache slot; prompts are prefilled in right-padded chunks
    of at most `chunk` tokens (rows with nothing left carry one pad token), the new keys and values are written
    into the slots, then greedy decode steps follow. Chunks ask for the logits of every real position of row 0
    (prompt logprobs) and of each row's last position; decode steps for one position per row."""
    lora_a, lora_b = adapters
    rows = len(prompts)
    capacity = dims["context"]
    cache = [torch.zeros(rows, dims.get("n_kv_head", dims["n_head"]), capacity, dims["head_dim"]) for _ in range(2 * dims["n_layer"])]
    cluster_index = torch.arange(rows) % lora_a.shape[0]
    row_scale = torch.tensor([(1.0, 0.5, 2.0)[r % 3] for r in range(rows)])
    lengths = [0] * rows
    pending = [list(p) for p in prompts]
    steps, expected = [], []

    def run(new_tokens, want):
        width = max(len(n) for n in new_tokens)
        ids = torch.tensor([n + [0] * (width - len(n)) for n in new_tokens])
        positions = torch.tensor([[min(lengths[r] + j, capacity - 1) for j in range(width)] for r in range(rows)])
        past = torch.tensor(lengths)
        logits_index = torch.tensor([r * width + j for r, js in enumerate(want) for j in js])
        with torch.no_grad():
            logits, keys, values = model.forward_slots(ids, positions, past, [(cache[2 * i], cache[2 * i + 1]) for i in range(dims["n_layer"])],
                                                       lora_a, lora_b, cluster_index, row_scale, logits_index, scale)
        for r, n in enumerate(new_tokens):
            for i in range(dims["n_layer"]):
                cache[2 * i][r, :, lengths[r]:lengths[r] + len(n)] = keys[i, r, :, :len(n)]
                cache[2 * i + 1][r, :, lengths[r]:lengths[r] + len(n)] = values[i, r, :, :len(n)]
            lengths[r] += len(n)
        steps.append({"input_ids": ids.tolist(), "position_ids": positions.tolist(), "past_length": past.tolist(),
                      "new_tokens": [len(n) for n in new_tokens], "cluster_index": cluster_index.tolist(), "lora_scale": row_scale.tolist(),
                      "logits_index": logits_index.tolist()})
        expected.append(encode_array(logits))
        return logits

    last = [None] * rows
    while any(pending):
        new = [p[:chunk] for p in pending]
        pending = [p[chunk:] for p in pending]
        want = [list(range(len(n))) if r == 0 else ([len(n) - 1] if n else []) for r, n in enumerate(new)]
        logits = run(new, want)
        at = 0
        for r, js in enumerate(want):
            if js:
                last[r] = logits[at + len(js) - 1]
            at += len(js)
    tokens = [int(l.argmax()) for l in last]
    for _ in range(decode_steps):
        logits = run([[t] for t in tokens], [[0]] * rows)
        tokens = logits.argmax(-1).tolist()
    return {"prompts": [list(p) for p in prompts], "cache_capacity": capacity, "steps": steps, "lora_a": encode_array(lora_a), "lora_b": encode_array(lora_b),
            "expected_logits": expected}


def sha256(path):
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def baseline_tensors(library, masks):
    """Raw tensors of the LoRA library and of LoRA*Mask: {tensor name: tensor}."""
    out = {}
    if library is not None:
        out.update({"library_lora_a": library["lora_a"], "library_lora_b": library["lora_b"], "library_centroids": library["centroids"]})
    if masks is not None:
        out.update({"masks_lora_a": masks["lora_a"], "masks_lora_b": masks["lora_b"], "masks_mask_a": masks["mask_a"],
                    "masks_mask_b": masks["mask_b"], "masks_centroids": masks["centroids"]})
    return out


# --- The adaptation half of a package: what `build.py` exports with its base and `adapt_package.py` adds to one ---

GATE_RULE = ("a context whose cosine similarity to every centroid (gate_centroids: the training domains' mean "
             "features) is below min_similarity gets the static LoRA alone; another, made from n prompt tokens, "
             "gets its generated update weighted n / (n + prior_tokens) (1 without prior_tokens)")
# manifest sections, and files / tensors entries, that belong to an adaptation (a base-only package has none of them)
ADAPTATION_SECTIONS = ("lora", "hypernet", "library", "masks")
ADAPTATION_FILES = ("hypernet", "static_lora_a", "static_lora_b", "library_lora_a", "library_lora_b", "library_centroids", "masks_lora_a",
                    "masks_lora_b", "masks_mask_a", "masks_mask_b", "masks_centroids", "gate_centroids")


def write_adaptation(out, hypernet, static, cfg, dims, library=None, masks=None, temperatures=None):
    """Writes hypernet.onnx (the network alone: a gate is served by the service, a gated context taking the static
    slot), the static factors, the gate's centroids and the library and mask tensors into `out`.

    Returns {"network": the exported module (eval mode), "rank": its output rank, "files": {key: file},
    "tensors": {key: spec}, "sections": {"lora", "hypernet", "library"?, "masks"?}}: the manifest entries a package
    needs for them. Every tensor is written from the CPU."""
    rank, scale = cfg["lora"]["rank"], cfg["lora"]["scale"]
    gate = hypernet if isinstance(hypernet, Gated) else None
    if gate is not None and gate.constant_weight is not None:
        raise ValueError("hypernet.gate.constant_weight is a validation control; the service weighs updates by prior_tokens")
    hypernet = (gate.stacked if gate is not None else hypernet).cpu()
    hypernet.eval()
    d_model = dims["d_model"]
    with torch.no_grad():
        hyper_rank = hypernet(torch.zeros(1, d_model))[0].shape[1]
    hyp_sig = hypernet_signature(dims, hyper_rank)
    export_onnx(hypernet, (torch.randn(2, d_model),), hyp_sig, out / "hypernet.onnx")
    write_tensor(static[0].cpu(), out / "static_lora_a.bin")
    write_tensor(static[1].cpu(), out / "static_lora_b.bin")
    baselines = baseline_tensors(library, masks)
    if gate is not None:
        baselines["gate_centroids"] = gate.centroids
    for name, tensor in baselines.items():
        write_tensor(tensor.cpu(), out / f"{name}.bin")
    files = {"hypernet": "hypernet.onnx", "static_lora_a": "static_lora_a.bin", "static_lora_b": "static_lora_b.bin",
             **{name: f"{name}.bin" for name in baselines}}
    tensors = {
        "static_lora_a": {"file": "static_lora_a.bin", "dtype": "float32", "shape": list(static[0].shape)},
        "static_lora_b": {"file": "static_lora_b.bin", "dtype": "float32", "shape": list(static[1].shape)},
        **{name: {"file": f"{name}.bin", "dtype": "float32", "shape": list(t.shape)} for name, t in baselines.items()},
    }
    temperatures = temperatures or {}
    sections = {
        "lora": {"rank": rank, "scale": scale, "adapted": "lm_head"},
        "hypernet": {**hyp_sig, "hidden": cfg["hypernet"]["hidden"], "rank": hyper_rank, "on_static": bool(cfg["hypernet"].get("on_static")),
                     **({"gate": {"names": gate.names, "min_similarity": gate.min_similarity,
                                  **({"prior_tokens": gate.prior_tokens} if gate.prior_tokens > 0 else {}),
                                  "rule": GATE_RULE}} if gate is not None else {})},
    }
    if library is not None:
        sections["library"] = {"names": library["names"], "rank": rank, "temperature": temperatures.get("library_weighted", 0.1),
                               "selector": "softmax over cosine(context, domain centroid) / temperature; 'library' takes the largest"}
    if masks is not None:
        sections["masks"] = {"names": masks["names"], "rank": rank, "temperature": temperatures.get("masks", 0.1),
                             "selector": "softmax over cosine(context, domain centroid) / temperature blends the masks"}
    return {"network": hypernet, "rank": hyper_rank, "files": files, "tensors": tensors, "sections": sections}


def strip_adaptation(manifest):
    """A copy of a manifest without any adaptation (the base-only package `model:import` writes), and the files the
    adaptation had."""
    files = {k: v for k, v in manifest.get("files", {}).items() if k in ADAPTATION_FILES}
    out = {k: v for k, v in manifest.items() if k not in ADAPTATION_SECTIONS}
    for key in ("files", "tensors", "sha256"):
        if key in out:
            out[key] = {k: v for k, v in out[key].items() if k not in ADAPTATION_FILES}
    return out, files


def export_package(out, model, hypernet, static, tokenizer_path, cfg, eos_id, fixture_prompts, extra, library=None, masks=None, temperatures=None):
    out.mkdir(parents=True, exist_ok=True)
    m = model.config
    dims = {**m, "head_dim": m["d_model"] // m["n_head"]}
    rank, scale = cfg["lora"]["rank"], cfg["lora"]["scale"]
    model.eval()
    dec_sig = decoder_signature(dims)

    batch, seq, capacity = 2, 3, 5
    cache = [torch.zeros(batch, m["n_head"], capacity, dims["head_dim"]) for _ in range(2 * m["n_layer"])]
    dummy = (
        torch.randint(0, m["vocab_size"], (batch, seq)), torch.arange(seq).repeat(batch, 1) + 2, torch.tensor([2, 1]),
        torch.zeros(3, rank, m["d_model"]), torch.zeros(3, m["vocab_size"], rank), torch.tensor([0, 2]),
        torch.tensor([1.0, 0.5]), torch.tensor([2, 5]), *cache,
    )
    export_onnx(DecoderGraph(model, scale), dummy, dec_sig, out / "decoder.onnx")
    adaptation = write_adaptation(out, hypernet, static, cfg, dims, library, masks, temperatures)
    hypernet, hyper_rank = adaptation["network"], adaptation["rank"]

    write_tensor(model.wte.weight, out / "embeddings.bin")
    shutil.copyfile(tokenizer_path, out / "tokenizer.json")

    with torch.no_grad():
        context = torch.nn.functional.normalize(model.wte.weight[torch.tensor(fixture_prompts[-1][1:])].mean(0, keepdim=True), dim=-1)
        hyper_a, hyper_b = hypernet(context)
    # the zero and static adapters are written at the hypernetwork's rank, as the server stacks them
    zero_a, zero_b = pad_rank(torch.zeros_like(static[0]), torch.zeros_like(static[1]), hyper_rank)
    static_a, static_b = pad_rank(static[0], static[1], hyper_rank)
    adapters = (torch.cat([zero_a, static_a, hyper_a]), torch.cat([zero_b, static_b, hyper_b]))
    (out / "equivalence.json").write_text(json.dumps(equivalence_fixture(model, dims, adapters, scale, fixture_prompts, 3)))

    adapted = adaptation["files"]
    files = {"decoder": "decoder.onnx", "hypernet": adapted["hypernet"], "tokenizer": "tokenizer.json", "embeddings": "embeddings.bin",
             **{k: v for k, v in adapted.items() if k != "hypernet"}, "equivalence": "equivalence.json", "eval": "eval.json"}
    sections = adaptation["sections"]
    manifest = {
        "format": FORMAT,
        "name": cfg["name"],
        "dims": dims,
        "lora": sections["lora"],
        "tokenizer": {"file": "tokenizer.json", "eos_token": "<|endoftext|>", "eos_token_id": eos_id, "bos_token_id": eos_id, "add_bos": True,
                      "chat_template": CHAT_TEMPLATE},
        "features": {"kind": "l2_normalised_mean_token_embedding", "exclude_token_ids": [eos_id]},
        "files": files,
        "sha256": {k: sha256(out / v) for k, v in files.items() if (out / v).exists() and k != "eval"},
        "tensors": {
            "embeddings": {"file": "embeddings.bin", "dtype": "float32", "shape": [m["vocab_size"], m["d_model"]]},
            **adaptation["tensors"],
        },
        "decoder": dec_sig,
        "hypernet": sections["hypernet"],
        **{k: sections[k] for k in ("library", "masks") if k in sections},
        "onnx_opset": OPSET,
        **extra,
    }
    write_json(manifest, out / "manifest.json")
    return manifest
