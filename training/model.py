"""GPT-2 style decoder (pre-LN, learned positions, tied embeddings, GELU) with an adaptable LM head.

The same module serves training (no cache, no adapter) and export (KV cache in, KV cache out, per-cluster
LoRA factors gathered per row), so the exported graph is the trained network and nothing else.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MASKED = -1e9


class Attention(nn.Module):
    def __init__(self, d_model, n_head, dropout):
        super().__init__()
        self.n_head = n_head
        self.head_dim = d_model // n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, bias, past_k=None, past_v=None):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, self.head_dim).transpose(1, 2) for z in (q, k, v))
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + bias
        y = self.dropout(F.softmax(scores, dim=-1)) @ v
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.dropout(self.proj(y)), k, v


class Block(nn.Module):
    def __init__(self, d_model, n_head, dropout):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_head, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, bias, past_k=None, past_v=None):
        a, k, v = self.attn(self.ln1(x), bias, past_k, past_v)
        x = x + a
        x = x + self.dropout(self.out(F.gelu(self.fc(self.ln2(x)))))
        return x, k, v


class GPT(nn.Module):
    def __init__(self, vocab_size, d_model, n_layer, n_head, context, dropout=0.0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, n_head=n_head, context=context)
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("out.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def hidden(self, input_ids):
        """Final hidden states for full, unpadded sequences (training and caching)."""
        t = input_ids.shape[1]
        causal = torch.full((t, t), MASKED).triu(1)
        x = self.drop(self.wte(input_ids) + self.wpe(torch.arange(t)))
        for block in self.blocks:
            x, _, _ = block(x, causal)
        return self.ln_f(x)

    def forward(self, input_ids):
        return self.hidden(input_ids) @ self.wte.weight.T

    def forward_cached(self, input_ids, position_ids, attention_mask, past_keys, past_values, lora_a, lora_b, cluster_index, lora_scale):
        """One decoder step over a padded batch: the graph that `decoder.onnx` holds.

        attention_mask covers past and current positions ([B, P+T], 1 = real token). Each row's LM head gets
        its own cluster's factors: logits = h Wᵀ + scale · B_k (A_k h).
        """
        t = input_ids.shape[1]
        total = attention_mask.shape[1]
        past = total - t
        key_pos = torch.arange(total).view(1, 1, total)
        query_pos = (torch.arange(t) + past).view(1, t, 1)
        allowed = (key_pos <= query_pos) & (attention_mask.view(-1, 1, total) > 0)
        bias = torch.where(allowed, torch.zeros(()), torch.full((), MASKED)).unsqueeze(1)
        x = self.wte(input_ids) + self.wpe(position_ids)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, bias, past_keys[i], past_values[i])
            keys.append(k)
            values.append(v)
        h = self.ln_f(x)
        logits = h @ self.wte.weight.T + lora_scale * lora_delta(h, lora_a[cluster_index], lora_b[cluster_index])
        return logits, torch.stack(keys), torch.stack(values)


def lora_delta(h, a, b):
    """B (A h) for rows whose factors are a [B, r, d] and b [B, V, r]."""
    return torch.einsum("btr,bvr->btv", torch.einsum("btd,brd->btr", h, a), b)


class HyperNetwork(nn.Module):
    """MLP from a cluster context [K, d] to LM-head LoRA factors A [K, r, d] and B [K, V, r].

    With an embedding basis, B also gets a term E·C(z) (E the frozen token embeddings, C(z) [d, r] generated):
    the network can then raise or lower whole regions of the vocabulary that resemble the context with few
    parameters, beside the free per-token part.
    """

    def __init__(self, d_model, vocab_size, rank, hidden, embedding_basis=None):
        super().__init__()
        self.d_model, self.vocab_size, self.rank = d_model, vocab_size, rank
        self.body = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.to_a = nn.Linear(hidden, rank * d_model)
        self.to_b = nn.Linear(hidden, vocab_size * rank)
        nn.init.normal_(self.to_a.weight, std=0.02)
        nn.init.normal_(self.to_a.bias, std=1.0 / math.sqrt(d_model))
        nn.init.zeros_(self.to_b.weight)
        nn.init.zeros_(self.to_b.bias)
        if embedding_basis is not None:
            self.register_buffer("basis", embedding_basis.detach().clone())
            self.to_c = nn.Linear(hidden, d_model * rank)
            nn.init.zeros_(self.to_c.weight)
            nn.init.zeros_(self.to_c.bias)
        else:
            self.basis = None

    def forward(self, context):
        z = self.body(context)
        a = self.to_a(z).view(-1, self.rank, self.d_model)
        b = self.to_b(z).view(-1, self.vocab_size, self.rank)
        if self.basis is not None:
            b = b + self.basis @ self.to_c(z).view(-1, self.d_model, self.rank)
        return a, b
