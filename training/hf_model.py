"""Hugging Face checkpoints of the GPT-2 and Llama families as one torch decoder with the package's graph contract.

`load_checkpoint(hf_dir)` reads a model folder (config.json, single or sharded safetensors in F32 / F16 / BF16) into
`ImportedDecoder`, float32, whose `forward_slots` is what `decoder.onnx` holds (the same contract as the shipped
model's: a slot KV cache read in place, logits only where asked, per-row LM-head LoRA) and whose `hidden` gives the
final normed hidden states that LM-head adaptation trains on.

Families: GPT-2 (`GPT2LMHeadModel`) and the Llama layout (`LlamaForCausalLM`, `MistralForCausalLM`,
`Qwen2ForCausalLM`; SmolLM2 is a Llama). Anything else is refused with the list of what is supported.
"""
import json
import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import skip_init

MASKED = -1e9

ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
GPT2_ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}
SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported; the message names the problem (file, tensor, config key)."""


class Safetensors:
    """The tensors of one checkpoint, single file or sharded, read one at a time through a memory map so that the
    checkpoint is never held in memory twice (the float32 copy is the only one)."""

    def __init__(self, hf_dir):
        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (self.dir / "model.safetensors").exists():
            files = ["model.safetensors"]
        else:
            found = sorted(p.name for p in self.dir.glob("*.safetensors")) or sorted(p.name for p in self.dir.glob("*.bin"))
            hint = f" (found {', '.join(found)})" if found else ""
            raise CheckpointError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json{hint}; "
                                  "only safetensors checkpoints can be imported")
        self.entries = {}
        for name in files:
            path = self.dir / name
            if not path.exists():
                raise CheckpointError(f"{hf_dir}: shard {name} named by model.safetensors.index.json is missing")
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            header.pop("__metadata__", None)
            size = path.stat().st_size
            for key, spec in header.items():
                start, end = spec["data_offsets"]
                if 8 + length + end > size:
                    raise CheckpointError(f"{name}: tensor {key} ends at byte {8 + length + end}, past the end of the file ({size} bytes): is it truncated?")
                self.entries[key] = (path, 8 + length + start, end - start, spec["dtype"], tuple(spec["shape"]))
        # buffers such as GPT-2's causal masks (U8, BOOL) are never read, so only the weights' types count
        self.dtypes = sorted({e[3] for e in self.entries.values() if e[3] in SAFETENSORS_DTYPES})

    def __contains__(self, key):
        return key in self.entries

    def keys(self):
        return self.entries.keys()

    def get(self, key, shape):
        """Tensor `key` as float32, checked against the shape the config implies."""
        if key not in self.entries:
            raise CheckpointError(f"{self.dir}: tensor {key} is missing")
        path, offset, nbytes, dtype, stored = self.entries[key]
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path.name}: tensor {key} is {dtype}; F32, F16 and BF16 can be imported")
        if stored != tuple(shape):
            raise CheckpointError(f"{self.dir}: tensor {key} has shape {list(stored)}, the config implies {list(shape)}")
        count = int(np.prod(stored)) if stored else 1
        if nbytes != count * SAFETENSORS_DTYPES[dtype].itemsize:
            raise CheckpointError(f"{path.name}: tensor {key} has {nbytes} bytes, its shape {list(stored)} in {dtype} needs {count * SAFETENSORS_DTYPES[dtype].itemsize}")
        raw = np.memmap(path, dtype=SAFETENSORS_DTYPES[dtype], mode="r", offset=offset, shape=(count,))
        if dtype == "BF16":
            values = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            values = raw.astype(np.float32)
        return torch.from_numpy(values.reshape(stored))


def read_config(hf_dir):
    path = Path(hf_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{hf_dir}: config.json is missing (is this a Hugging Face model folder?)")
    return json.loads(path.read_text())


def family_of(config):
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return name, ARCHITECTURES[name]
    if not names:
        for name, family in ARCHITECTURES.items():
            if config.get("model_type") == family:
                return name, family
    supported = ", ".join(f"{a} ({f})" for a, f in ARCHITECTURES.items())
    raise CheckpointError(f"architecture {', '.join(names) or '(none in config.json)'} is not supported; supported: {supported}")


def rope_settings(config):
    """theta and the rope scaling of a Llama-family config, in either spelling: `rope_theta` + `rope_scaling`, or
    the newer `rope_parameters` (which carries rope_theta and the scaling type in one object)."""
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or params)
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    return float(theta), kind, scaling


def inverse_frequencies(config, head_dim):
    """RoPE's per-pair frequencies, with llama3 and linear scaling applied (what transformers computes)."""
    theta, kind, scaling = rope_settings(config)
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        original = float(scaling["original_max_position_embeddings"])
        wavelength = 2 * math.pi / inv
        low_wavelength, high_wavelength = original / low, original / high
        scaled = torch.where(wavelength > low_wavelength, inv / factor, inv)
        smooth = (original / wavelength - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelength <= low_wavelength) & (wavelength >= high_wavelength)
        return torch.where(medium, blended, scaled)
    raise CheckpointError(f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def linear(width_in, width_out, bias):
    """A Linear without its random initialisation (the checkpoint's weights are copied in next)."""
    return skip_init(nn.Linear, width_in, width_out, bias=bias)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, width, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads over a row's cache slot and its new positions.

    The query heads that share a key/value head are stacked along the position axis ([B, Hkv, G*T, Dh]), so the
    cache is read as is, never repeated per query head. The 1 / sqrt(head_dim) scale is folded into the query
    projection when the weights are loaded (the shipped model's export does the same, for the same speed reason).
    """

    def __init__(self, d_model, n_head, n_kv_head, head_dim, qkv_bias, out_bias, rope):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.q = linear(d_model, n_head * head_dim, qkv_bias)
        self.k = linear(d_model, n_kv_head * head_dim, qkv_bias)
        self.v = linear(d_model, n_kv_head * head_dim, qkv_bias)
        self.o = linear(n_head * head_dim, d_model, out_bias)
        self.rope = rope

    def forward(self, x, rotation, cache_k, cache_v, cache_bias, causal):
        b, t, _ = x.shape
        group = self.n_head // self.n_kv_head
        q = self.q(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.rope:
            cos, sin = rotation
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        q = q.reshape(b, self.n_kv_head, group * t, self.head_dim)
        cached = q @ cache_k.transpose(-2, -1) + cache_bias
        new = q @ k.transpose(-2, -1) + causal.repeat(1, 1, group, 1)
        p = F.softmax(torch.cat([cached, new], dim=-1), dim=-1)
        c = cache_k.shape[2]
        y = p[..., :c] @ cache_v + p[..., c:] @ v
        y = y.reshape(b, self.n_head, t, self.head_dim).transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)
        return self.o(y), k, v


class GatedMLP(nn.Module):
    def __init__(self, d_model, inner, bias):
        super().__init__()
        self.gate = linear(d_model, inner, bias)
        self.up = linear(d_model, inner, bias)
        self.down = linear(inner, d_model, bias)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MLP(nn.Module):
    def __init__(self, d_model, inner, activation):
        super().__init__()
        self.fc = linear(d_model, inner, True)
        self.proj = linear(inner, d_model, True)
        self.activation = activation

    def forward(self, x):
        return self.proj(self.activation(self.fc(x)))


class Block(nn.Module):
    def __init__(self, norm1, attention, norm2, mlp):
        super().__init__()
        self.norm1, self.attention, self.norm2, self.mlp = norm1, attention, norm2, mlp

    def forward(self, x, rotation, cache_k, cache_v, cache_bias, causal):
        a, k, v = self.attention(self.norm1(x), rotation, cache_k, cache_v, cache_bias, causal)
        x = x + a
        return x + self.mlp(self.norm2(x)), k, v


class ImportedDecoder(nn.Module):
    def __init__(self, summary, blocks, norm, embeddings, head, positions, inv_freq):
        super().__init__()
        self.config_summary = summary
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm
        self.embed = nn.Embedding.from_pretrained(embeddings, freeze=True)
        self.tied = head is None
        self.lm_head = None if head is None else nn.Parameter(head, requires_grad=False)
        self.wpe = None if positions is None else nn.Embedding.from_pretrained(positions, freeze=True)
        if inv_freq is not None:
            self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        else:
            self.inv_freq = None

    @property
    def embeddings(self):
        return self.embed.weight

    @property
    def head(self):
        return self.embed.weight if self.tied else self.lm_head

    def trunk(self, input_ids, position_ids, past_length, caches):
        """Final normed hidden states [B, T, d] of the new positions and their keys and values per layer."""
        b, t = input_ids.shape
        c = caches[0][0].shape[2]
        device = input_ids.device
        cache_bias = torch.where(torch.arange(c, device=device).view(1, c) < past_length.view(-1, 1),
                                 torch.zeros((), device=device), torch.full((), MASKED, device=device))
        cache_bias = cache_bias.view(b, 1, 1, c)
        causal = torch.full((t, t), MASKED, device=device).triu(1).view(1, 1, t, t)
        x = self.embed(input_ids)
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        rotation = None
        if self.inv_freq is not None:
            angles = position_ids.unsqueeze(-1).float() * self.inv_freq
            angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)
            rotation = (angles.cos(), angles.sin())
        keys, values = [], []
        for block, (cache_k, cache_v) in zip(self.blocks, caches):
            x, k, v = block(x, rotation, cache_k, cache_v, cache_bias, causal)
            keys.append(k)
            values.append(v)
        return self.norm(x), keys, values

    def empty_caches(self, batch):
        s = self.config_summary["dims"]
        device = self.embed.weight.device
        return [(torch.zeros(batch, s["n_kv_head"], 0, s["head_dim"], device=device), torch.zeros(batch, s["n_kv_head"], 0, s["head_dim"], device=device))
                for _ in self.blocks]

    def hidden(self, input_ids):
        """Final normed hidden states of whole, unpadded sequences (no cache): what LM-head adaptation trains on."""
        b, t = input_ids.shape
        device = input_ids.device
        positions = torch.arange(t, device=device).repeat(b, 1)
        h, _, _ = self.trunk(input_ids, positions, torch.zeros(b, dtype=torch.long, device=device), self.empty_caches(b))
        return h

    def forward(self, input_ids):
        return self.hidden(input_ids) @ self.head.T

    def forward_slots(self, input_ids, position_ids, past_length, caches, lora_a, lora_b, cluster_index, row_scale, logits_index, lora_scale):
        """The decoder graph (docs/model-package.md): rows right-padded over their own cache slots; logits only at
        `logits_index` (flat b * T + t), each with its row's LoRA factors and strength:
        logits = h Wᵀ + lora_scale · s_b · B_k (A_k h). Returns logits and the new keys and values [L, B, Hkv, T, Dh]."""
        b, t = input_ids.shape
        h, keys, values = self.trunk(input_ids, position_ids, past_length, caches)
        h = h.reshape(b * t, -1)[logits_index]
        row = torch.div(logits_index, t, rounding_mode="floor")
        k_index = cluster_index[row]
        a, bb = lora_a[k_index], lora_b[k_index]
        delta = (bb @ torch.einsum("nd,nrd->nr", h, a).unsqueeze(-1)).squeeze(-1)
        logits = h @ self.head.T + (lora_scale * row_scale[row]).unsqueeze(1) * delta
        return logits, torch.stack(keys), torch.stack(values)


def _copy(param, tensor):
    with torch.no_grad():
        param.copy_(tensor)


def _gpt2(config, weights, context):
    d, n_layer, n_head = config["n_embd"], config["n_layer"], config["n_head"]
    vocab, positions = config["vocab_size"], config["n_positions"]
    inner = config.get("n_inner") or 4 * d
    eps = config.get("layer_norm_epsilon", 1e-5)
    activation_name = config.get("activation_function", "gelu_new")
    if activation_name not in GPT2_ACTIVATIONS:
        raise CheckpointError(f"activation_function {activation_name!r} is not supported (supported: {', '.join(GPT2_ACTIVATIONS)})")
    if config.get("scale_attn_by_inverse_layer_idx"):
        raise CheckpointError("scale_attn_by_inverse_layer_idx is not supported")
    if context > positions:
        raise CheckpointError(f"context {context} is longer than the learned positions (n_positions {positions})")
    prefix = "transformer." if "transformer.wte.weight" in weights else ""
    head_dim = d // n_head
    scale = 1.0 / math.sqrt(head_dim) if config.get("scale_attn_weights", True) else 1.0
    blocks = []
    for i in range(n_layer):
        p = f"{prefix}h.{i}."
        attention = Attention(d, n_head, n_head, head_dim, True, True, rope=False)
        # Conv1D stores [in, out]; c_attn packs q, k, v along the output axis
        w = weights.get(p + "attn.c_attn.weight", (d, 3 * d)).T
        bias = weights.get(p + "attn.c_attn.bias", (3 * d,))
        for j, linear in enumerate((attention.q, attention.k, attention.v)):
            factor = scale if j == 0 else 1.0
            _copy(linear.weight, w[j * d:(j + 1) * d] * factor)
            _copy(linear.bias, bias[j * d:(j + 1) * d] * factor)
        _copy(attention.o.weight, weights.get(p + "attn.c_proj.weight", (d, d)).T)
        _copy(attention.o.bias, weights.get(p + "attn.c_proj.bias", (d,)))
        mlp = MLP(d, inner, GPT2_ACTIVATIONS[activation_name])
        _copy(mlp.fc.weight, weights.get(p + "mlp.c_fc.weight", (d, inner)).T)
        _copy(mlp.fc.bias, weights.get(p + "mlp.c_fc.bias", (inner,)))
        _copy(mlp.proj.weight, weights.get(p + "mlp.c_proj.weight", (inner, d)).T)
        _copy(mlp.proj.bias, weights.get(p + "mlp.c_proj.bias", (d,)))
        norms = []
        for name in ("ln_1", "ln_2"):
            norm = nn.LayerNorm(d, eps=eps)
            _copy(norm.weight, weights.get(p + f"{name}.weight", (d,)))
            _copy(norm.bias, weights.get(p + f"{name}.bias", (d,)))
            norms.append(norm)
        blocks.append(Block(norms[0], attention, norms[1], mlp))
    final = nn.LayerNorm(d, eps=eps)
    _copy(final.weight, weights.get(f"{prefix}ln_f.weight", (d,)))
    _copy(final.bias, weights.get(f"{prefix}ln_f.bias", (d,)))
    embeddings = weights.get(f"{prefix}wte.weight", (vocab, d))
    wpe = weights.get(f"{prefix}wpe.weight", (positions, d))[:context].clone()
    tied = config.get("tie_word_embeddings", True)
    head = None if tied else weights.get("lm_head.weight", (vocab, d))
    dims = dict(vocab_size=vocab, d_model=d, n_layer=n_layer, n_head=n_head, n_kv_head=n_head, head_dim=head_dim, context=context)
    extras = {"activation": activation_name, "layer_norm_epsilon": eps, "positions": "learned", "tied_head": bool(tied)}
    return dims, extras, blocks, final, embeddings, head, wpe, None


def _llama(config, weights, context, family):
    d, n_layer, n_head = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    n_kv_head = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or d // n_head
    vocab, inner = config["vocab_size"], config["intermediate_size"]
    eps = config.get("rms_norm_eps", 1e-6)
    if config.get("hidden_act", "silu") not in ("silu", "swish"):
        raise CheckpointError(f"hidden_act {config['hidden_act']!r} is not supported (supported: silu)")
    if n_head % n_kv_head:
        raise CheckpointError(f"num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_kv_head}")
    window = config.get("sliding_window")
    uses_window = sliding_window_applies(config, family)
    if uses_window and window is not None and window < context:
        raise CheckpointError(f"sliding_window {window} is shorter than the context to export ({context}); sliding-window "
                              f"attention is not implemented: export a context of at most {window} (--context {window})")
    if family == "qwen2":
        qkv_bias, out_bias, mlp_bias = True, False, False
    else:
        qkv_bias = out_bias = bool(config.get("attention_bias", False))
        mlp_bias = bool(config.get("mlp_bias", False))
    inv_freq = inverse_frequencies(config, head_dim)
    scale = 1.0 / math.sqrt(head_dim)
    blocks = []
    for i in range(n_layer):
        p = f"model.layers.{i}."
        attention = Attention(d, n_head, n_kv_head, head_dim, qkv_bias, out_bias, rope=True)
        shapes = {"q": n_head * head_dim, "k": n_kv_head * head_dim, "v": n_kv_head * head_dim}
        for name, rows in shapes.items():
            linear = getattr(attention, name)
            factor = scale if name == "q" else 1.0
            _copy(linear.weight, weights.get(p + f"self_attn.{name}_proj.weight", (rows, d)) * factor)
            if qkv_bias:
                _copy(linear.bias, weights.get(p + f"self_attn.{name}_proj.bias", (rows,)) * factor)
        _copy(attention.o.weight, weights.get(p + "self_attn.o_proj.weight", (d, n_head * head_dim)))
        if out_bias:
            _copy(attention.o.bias, weights.get(p + "self_attn.o_proj.bias", (d,)))
        mlp = GatedMLP(d, inner, mlp_bias)
        for name, shape in (("gate", (inner, d)), ("up", (inner, d)), ("down", (d, inner))):
            _copy(getattr(mlp, name).weight, weights.get(p + f"mlp.{name}_proj.weight", shape))
            if mlp_bias:
                _copy(getattr(mlp, name).bias, weights.get(p + f"mlp.{name}_proj.bias", (shape[0],)))
        norms = []
        for name in ("input_layernorm", "post_attention_layernorm"):
            norm = RMSNorm(d, eps)
            _copy(norm.weight, weights.get(p + f"{name}.weight", (d,)))
            norms.append(norm)
        blocks.append(Block(norms[0], attention, norms[1], mlp))
    final = RMSNorm(d, eps)
    _copy(final.weight, weights.get("model.norm.weight", (d,)))
    embeddings = weights.get("model.embed_tokens.weight", (vocab, d))
    tied = config.get("tie_word_embeddings", False)
    if "lm_head.weight" not in weights and not tied:
        raise CheckpointError(f"{weights.dir}: tensor lm_head.weight is missing (tie_word_embeddings is false)")
    head = None if tied else weights.get("lm_head.weight", (vocab, d))
    theta, kind, scaling = rope_settings(config)
    dims = dict(vocab_size=vocab, d_model=d, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, head_dim=head_dim, context=context)
    extras = {"rms_norm_eps": eps, "positions": "rope (rotate_half)", "rope": {"theta": theta, "scaling": kind, **({"parameters": scaling} if kind != "default" else {})},
              "tied_head": bool(tied), "attention_bias": qkv_bias, "mlp_bias": mlp_bias}
    if uses_window and window is not None:
        extras["sliding_window"] = window
    return dims, extras, blocks, final, embeddings, head, None, inv_freq


def sliding_window_applies(config, family):
    """Mistral windows every layer; Qwen2 only with use_sliding_window, and only layers from max_window_layers on."""
    if family == "mistral":
        return True
    if not config.get("use_sliding_window", False):
        return False
    return family != "qwen2" or config.get("max_window_layers", 0) < config["num_hidden_layers"]


def default_context(config, family):
    if family == "gpt2":
        return config["n_positions"]
    context = config["max_position_embeddings"]
    window = config.get("sliding_window")
    if sliding_window_applies(config, family) and window:
        context = min(context, window)
    return context


def load_checkpoint(hf_dir, context=None):
    """The checkpoint in `hf_dir` as an ImportedDecoder (float32, eval mode) exporting `context` positions (default:
    the checkpoint's own)."""
    config = read_config(hf_dir)
    architecture, family = family_of(config)
    weights = Safetensors(hf_dir)
    context = context or default_context(config, family)
    try:
        if family == "gpt2":
            dims, extras, blocks, final, embeddings, head, wpe, inv_freq = _gpt2(config, weights, context)
        else:
            dims, extras, blocks, final, embeddings, head, wpe, inv_freq = _llama(config, weights, context, family)
    except KeyError as error:
        raise CheckpointError(f"config.json lacks {error.args[0]!r}, which a {architecture} config has") from None
    summary = {"family": family, "hf_architecture": architecture, "dims": dims, "stored_dtypes": weights.dtypes, **extras}
    model = ImportedDecoder(summary, blocks, final, embeddings, head, wpe, inv_freq)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
