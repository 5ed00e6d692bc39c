"""GPT-2 style decoder (pre-LN, learned positions, tied embeddings, GELU) with an adaptable LM head.

The same module serves training (no cache, no adapter) and export (a slot KV cache read in place, only the new
positions' keys and values returned, per-cluster LoRA factors gathered per row), so the exported graph is the
trained network and nothing else.
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

    def forward_slots(self, x, cache_k, cache_v, cache_bias, causal):
        """Attention over a row's cached positions (read in place, never concatenated) and its new ones.

        cache_k / cache_v [B, H, C, Dh] hold C positions per row, of which cache_bias masks those past the
        row's own length; the scores of cached and new keys share one softmax.
        """
        b, t, d = x.shape
        # The 1 / sqrt(head_dim) scale goes into the query projection's weights (ONNX Runtime folds the constant
        # product when it loads the graph) rather than onto q: ONNX Runtime fuses a Mul beside the score MatMul into
        # a scaled FusedMatMul that takes about twice as long on the cache's [B, H, C, Dh] shape.
        width = self.proj.in_features  # a Python int, so that the scale is a constant of the exported graph
        scale = torch.cat([torch.full((width,), 1.0 / math.sqrt(self.head_dim)), torch.ones(2 * width)])
        q, k, v = F.linear(x, self.qkv.weight * scale.unsqueeze(1), self.qkv.bias * scale).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, self.head_dim).transpose(1, 2) for z in (q, k, v))
        cached = q @ cache_k.transpose(-2, -1) + cache_bias
        new = q @ k.transpose(-2, -1) + causal
        p = F.softmax(torch.cat([cached, new], dim=-1), dim=-1)
        c = cache_k.shape[2]
        y = p[..., :c] @ cache_v + p[..., c:] @ v
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.proj(y), k, v


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

    def forward_slots(self, x, cache_k, cache_v, cache_bias, causal):
        a, k, v = self.attn.forward_slots(self.ln1(x), cache_k, cache_v, cache_bias, causal)
        x = x + a
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
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

    def forward_slots(self, input_ids, position_ids, past_length, caches, lora_a, lora_b, cluster_index, row_scale, logits_index, lora_scale):
        """One decoder run over rows that each own a cache slot: the graph that `decoder.onnx` holds.

        Rows are right-padded: row b has past_length[b] cached positions and its new tokens start at the
        left of input_ids (padding after them is never attended by a real token, by causality). caches holds
        (keys, values) per layer, [B, H, C, Dh]. Only the positions named by logits_index (flat indices into
        [B * T]) get logits, each with its row's cluster factors and strength: logits = h Wᵀ + scale · s_b · B_k (A_k h).
        The rank of the factors is free (an adapter of lower rank is zero-padded by the caller).
        Returns logits [N, V] and the new positions' keys and values [L, B, H, T, Dh].
        """
        b, t = input_ids.shape
        c = caches[0][0].shape[2]
        cache_bias = torch.where(torch.arange(c).view(1, c) < past_length.view(-1, 1), torch.zeros(()), torch.full((), MASKED))
        cache_bias = cache_bias.view(b, 1, 1, c)
        causal = torch.full((t, t), MASKED).triu(1).view(1, 1, t, t)
        x = self.wte(input_ids) + self.wpe(position_ids)
        keys, values = [], []
        for block, (cache_k, cache_v) in zip(self.blocks, caches):
            x, k, v = block.forward_slots(x, cache_k, cache_v, cache_bias, causal)
            keys.append(k)
            values.append(v)
        h = self.ln_f(x).reshape(b * t, -1)[logits_index]
        row = torch.div(logits_index, t, rounding_mode="floor")
        k_index = cluster_index[row]
        a, bb = lora_a[k_index], lora_b[k_index]
        # B_k u as a batched matrix-vector product: ONNX Runtime runs it about 4x faster than the same Einsum
        delta = (bb @ torch.einsum("nd,nrd->nr", h, a).unsqueeze(-1)).squeeze(-1)
        logits = h @ self.wte.weight.T + (lora_scale * row_scale[row]).unsqueeze(1) * delta
        return logits, torch.stack(keys), torch.stack(values)


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
