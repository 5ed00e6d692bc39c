"""Turns a Hugging Face model folder into a base-only model package that the service serves at once.

    npm run model:import -- HF_DIR OUT_DIR [--dtype float32|float16|int8] [--context N] [--name NAME]

The package holds `decoder.onnx` (the checkpoint's decoder under the package's graph contract: slot KV cache,
logits where asked, per-row LM-head LoRA inputs), the token-embedding table for the feature step, the checkpoint's
own `tokenizer.json`, its special tokens and chat template, an equivalence fixture and the manifest. It has no
adaptation yet: `npm run model:adapt -- --base OUT_DIR --corpus CORPUS` trains it (training/adapt_package.py).
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, log, write_json  # noqa: E402
from export import FORMAT, OPSET, DecoderGraph, decoder_signature, equivalence_fixture, export_onnx, sha256, write_tensor  # noqa: E402
from hf_model import CheckpointError, load_checkpoint, read_config  # noqa: E402
from onnx_files import consolidate  # noqa: E402
from onnx_float16 import convert_to_float16  # noqa: E402
from onnx_int8 import convert_to_int8  # noqa: E402

PROBE_TEXT = "Hello world"
# transformers rebuilds these tokenizers' post-processor from add_bos_token / add_eos_token when it loads them
# (add_bos_token defaults to true), so those flags, not tokenizer.json's template, say whether BOS is added
FLAG_TOKENIZERS = {"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast"}
SMALLEST_CONTEXT = 16  # the server's smallest MAX_MODEL_LEN
# The equivalence fixture replays whole cache slots; a short one keeps it small at any exported context.
FIXTURE_CONTEXT = 64
# Its about 30 rows of logits are written in base64: past this vocabulary it would take over 64 MB.
FIXTURE_MAX_VOCAB = 400_000
DTYPES = ("float32", "float16", "int8")


def token_text(token):
    """tokenizer_config.json writes special tokens as a string or as an AddedToken object."""
    if isinstance(token, dict):
        return token.get("content")
    return token


def read_json(path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def token_ids(tokenizer_json):
    ids = dict(tokenizer_json["model"].get("vocab") or {})
    for added in tokenizer_json.get("added_tokens", []):
        ids[added["content"]] = added["id"]
    return ids


def tokenizer_kind(tokenizer_json):
    """How the service turns a token into bytes: GPT-2's byte alphabet, or SentencePiece's ▁ and <0xNN> pieces."""
    model = tokenizer_json["model"]
    if model.get("type") != "BPE":
        raise CheckpointError(f"tokenizer.json has a {model.get('type')} model; byte-level and SentencePiece-style BPE tokenizers are supported")

    def types(node):
        if not node:
            return []
        inner = node.get("pretokenizers") or node.get("decoders") or []
        return [node.get("type")] + [t for n in inner for t in types(n)]

    if "ByteLevel" in types(tokenizer_json.get("pre_tokenizer")) + types(tokenizer_json.get("decoder")):
        return "byte_level"
    if model.get("byte_fallback") or "Metaspace" in types(tokenizer_json.get("pre_tokenizer")) + types(tokenizer_json.get("decoder")):
        return "sentencepiece"
    raise CheckpointError("tokenizer.json is neither byte-level (ByteLevel pre-tokenizer or decoder) nor SentencePiece-style (Metaspace, byte fallback)")


def probe_tokenizer(path):
    """Ids of a probe text with and without the tokenizer's own special tokens, from the service's tokenizer library."""
    done = subprocess.run(["node", str(ROOT / "training/tokenizer_probe.mjs"), str(path), PROBE_TEXT],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CheckpointError(f"the service's tokenizer library cannot load {path}: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def special_tokens(hf_dir, config, out_tokenizer):
    """BOS as the tokenizer adds it, the EOS ids (generation_config.json wins), the chat template, the tokenizer kind."""
    tokenizer_json = json.loads(out_tokenizer.read_text())
    ids = token_ids(tokenizer_json)
    names = {v: k for k, v in ids.items()}
    tokenizer_config = read_json(hf_dir / "tokenizer_config.json", {})
    generation = read_json(hf_dir / "generation_config.json", {})
    probe = probe_tokenizer(out_tokenizer)
    plain, special = probe["plain"], probe["special"]
    # the text's own ids sit somewhere in what the tokenizer makes of it with its special tokens: what comes before
    # them is the BOS it adds (an EOS it appends is not kept: generation continues after the prompt)
    starts = [i for i in range(len(special) - len(plain) + 1) if special[i:i + len(plain)] == plain]
    if not starts:
        raise CheckpointError(f"the tokenizer's special tokens change the text's own ids ({plain} -> {special}); cannot tell its BOS")
    added_before = special[:starts[0]]
    if len(added_before) > 1:
        raise CheckpointError(f"the tokenizer adds {len(added_before)} tokens before a text ({added_before}); one BOS is supported")
    bos_name = token_text(tokenizer_config.get("bos_token"))
    if tokenizer_config.get("tokenizer_class") in FLAG_TOKENIZERS:
        add_bos = bool(tokenizer_config.get("add_bos_token", True))
        bos_id = ids.get(bos_name, config.get("bos_token_id"))
        if add_bos and bos_id not in names:
            raise CheckpointError(f"tokenizer_config.json asks for a BOS ({bos_name!r}) that tokenizer.json lacks")
    else:
        add_bos = len(added_before) == 1
        bos_id = added_before[0] if add_bos else ids.get(bos_name, config.get("bos_token_id"))
    if bos_id not in names:  # a padding id, or none at all: nothing to name
        bos_id = None

    eos = generation.get("eos_token_id")
    if eos is None:
        eos = config.get("eos_token_id")
    if eos is None:
        eos_name = token_text(tokenizer_config.get("eos_token"))
        eos = ids.get(eos_name)
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    if not eos_ids:
        raise CheckpointError("no EOS token: none in generation_config.json, config.json or tokenizer_config.json")
    for e in eos_ids:
        if e not in names:
            raise CheckpointError(f"EOS id {e} is not a token of tokenizer.json")

    # transformers writes the template into chat_template.jinja nowadays, and reads that file first
    jinja = hf_dir / "chat_template.jinja"
    template = jinja.read_text() if jinja.exists() else tokenizer_config.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one is what chat uses
        named = {t.get("name"): t.get("template") for t in template}
        if "default" not in named:
            raise CheckpointError(f"tokenizer_config.json has chat templates {sorted(named)} but none named 'default'")
        template = named["default"]
    section = {
        "file": "tokenizer.json",
        "kind": tokenizer_kind(tokenizer_json),
        "eos_token": names[eos_ids[0]],
        "eos_token_id": eos_ids[0],
        "eos_token_ids": eos_ids,
        "bos_token_id": bos_id,
        "add_bos": add_bos,
        "special_tokens": sorted(t["content"] for t in tokenizer_json.get("added_tokens", []) if t.get("special")),
    }
    if bos_id is not None:
        section["bos_token"] = names.get(bos_id)
    if template:
        section["chat_template"] = template
    return section, probe["vocab_size"]


def fixture_prompts(vocab_size, tokenizer):
    """Three prompts of different lengths from fixed token ids (BOS first when the package adds one)."""
    generator = torch.Generator().manual_seed(0)
    limit = min(vocab_size, 256)
    bos = [tokenizer["bos_token_id"]] if tokenizer["add_bos"] else []
    return [bos + torch.randint(0, limit, (n,), generator=generator).tolist() for n in (7, 4, 9)]


def export_decoder(model, out):
    dims = model.config_summary["dims"]
    signature = decoder_signature(dims)
    batch, seq, capacity, clusters, rank = 2, 3, 5, 3, 2
    caches = [torch.zeros(batch, dims["n_kv_head"], capacity, dims["head_dim"]) for _ in range(2 * dims["n_layer"])]
    dummy = (
        torch.randint(0, dims["vocab_size"], (batch, seq)), torch.arange(seq).repeat(batch, 1) + 2, torch.tensor([2, 1]),
        torch.zeros(clusters, rank, dims["d_model"]), torch.zeros(clusters, dims["vocab_size"], rank), torch.tensor([0, 2]),
        torch.tensor([1.0, 0.5]), torch.tensor([2, 5]), *caches,
    )
    export_onnx(DecoderGraph(model, 1.0), dummy, signature, out / "decoder.onnx")
    return signature


def write_equivalence(model, tokenizer, out):
    """PyTorch logits of the imported decoder over chunked prefills and decode steps in a short cache, with the zero
    adapter, a random adapter and rows of different strengths: `test/model/equivalence.ts` replays them in ONNX Runtime."""
    dims = {**model.config_summary["dims"]}
    dims["context"] = min(dims["context"], FIXTURE_CONTEXT)
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(1, 2, dims["d_model"], generator=generator) / dims["d_model"] ** 0.5
    b = torch.randn(1, dims["vocab_size"], 2, generator=generator)
    adapters = (torch.cat([torch.zeros_like(a), a]), torch.cat([torch.zeros_like(b), b]))
    fixture = equivalence_fixture(model, dims, adapters, 1.0, fixture_prompts(dims["vocab_size"], tokenizer), 3)
    (out / "equivalence.json").write_text(json.dumps(fixture))


def import_checkpoint(hf_dir, out, context=None, name=None, dtype="float32"):
    started = time.time()
    hf_dir, out = Path(hf_dir).resolve(), Path(out)
    if not (hf_dir / "tokenizer.json").exists():
        raise CheckpointError(f"{hf_dir}: tokenizer.json is missing (the service needs the fast tokenizer's file)")
    config = read_config(hf_dir)
    log(f"reading {hf_dir}")
    if context is not None and context < SMALLEST_CONTEXT:
        raise CheckpointError(f"--context {context} is below {SMALLEST_CONTEXT}, the shortest cache slot the server serves")
    model = load_checkpoint(hf_dir, context)
    summary = model.config_summary
    dims = summary["dims"]
    params = sum(p.numel() for p in model.parameters())
    log(f"{summary['hf_architecture']} ({summary['family']}): {params / 1e6:.1f}M parameters, stored as {', '.join(summary['stored_dtypes'])}, "
        f"{dims['n_layer']} layers, d {dims['d_model']}, {dims['n_head']} heads ({dims['n_kv_head']} key/value), context {dims['context']}")

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(hf_dir / "tokenizer.json", out / "tokenizer.json")
    tokenizer, tokenizer_size = special_tokens(hf_dir, config, out / "tokenizer.json")
    if tokenizer_size > dims["vocab_size"]:
        raise CheckpointError(f"tokenizer.json has {tokenizer_size} tokens, more than the model's vocab_size {dims['vocab_size']}")

    log("exporting decoder.onnx")
    signature = export_decoder(model, out)
    write_tensor(model.embeddings, out / "embeddings.bin")
    files = {"decoder": "decoder.onnx", "tokenizer": "tokenizer.json", "embeddings": "embeddings.bin"}
    if dtype != "float32" or dims["vocab_size"] > FIXTURE_MAX_VOCAB:
        (out / "equivalence.json").unlink(missing_ok=True)
    else:
        # the fixture is float32 PyTorch's logits: a float16 or int8 graph differs from it by more than the replay allows
        log("writing the equivalence fixture")
        write_equivalence(model, tokenizer, out)
        files["equivalence"] = "equivalence.json"
    del model  # the graph's rewrites below load its weights again
    if dtype == "float16":
        log("storing the weights in float16")
        decoder_files = convert_to_float16(out / "decoder.onnx")
    elif dtype == "int8":
        log("quantizing the weight matrices' products to int8 (DynamicQuantizeMatMul)")
        decoder_files = convert_to_int8(out / "decoder.onnx")
    else:
        decoder_files = consolidate(out / "decoder.onnx")
    if len(decoder_files) > 1:
        log(f"the weights are over 2 GB: decoder.onnx keeps them in {decoder_files[1]}")
        files["decoder_data"] = decoder_files[1]

    excluded = sorted(set(([tokenizer["bos_token_id"]] if tokenizer["bos_token_id"] is not None else []) + tokenizer["eos_token_ids"]))
    architecture = {key: value for key, value in summary.items() if key not in ("dims",)}
    manifest = {
        "format": FORMAT,
        "name": name or out.resolve().name,
        "dims": dims,
        "tokenizer": tokenizer,
        "features": {"kind": "l2_normalised_mean_token_embedding", "exclude_token_ids": excluded},
        "files": files,
        "sha256": {key: sha256(out / file) for key, file in files.items()},
        "tensors": {"embeddings": {"file": "embeddings.bin", "dtype": "float32", "shape": [dims["vocab_size"], dims["d_model"]]}},
        "decoder": signature,
        "architecture": {**architecture, "dtype": dtype, "source": {"path": str(hf_dir), "config": config}},
        "onnx_opset": OPSET,
        "import": {"seconds": round(time.time() - started, 1), "parameters": params},
    }
    write_json(manifest, out / "manifest.json")
    size = sum(p.stat().st_size for p in out.iterdir())
    log(f"package written to {out} ({size / 1e6:.1f} MB) in {time.time() - started:.0f} s; serve it with MODEL_DIR={out} npm start, "
        f"adapt it with npm run model:adapt -- --base {out} --corpus CORPUS")
    return manifest


def main():
    parser = argparse.ArgumentParser(description="Import a Hugging Face checkpoint (GPT-2 or Llama family) as a base-only model package.")
    parser.add_argument("hf_dir", help="Hugging Face model folder (config.json, *.safetensors, tokenizer.json)")
    parser.add_argument("out_dir", help="package folder to write")
    parser.add_argument("--context", type=int, default=None, help="positions to export (default: the checkpoint's own)")
    parser.add_argument("--name", default=None, help="package name (default: the output folder's name)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="weights of decoder.onnx: float16 halves their memory and runs the matrix products in half precision (for CUDA); "
                             "int8 quarters the weight matrices and runs their products in int8 on the CPU (ONNX Runtime's DynamicQuantizeMatMul)")
    args = parser.parse_args()
    try:
        import_checkpoint(args.hf_dir, args.out_dir, args.context, args.name, args.dtype)
    except CheckpointError as error:
        raise SystemExit(f"model:import: {error}") from None


if __name__ == "__main__":
    main()
