"""LM-head adaptation on the frozen base: cached hidden states, static LoRA, ChameleonLLM hypernetwork.

Only the LM head is adapted, so the base's final hidden states are computed once per text and cached; both
the static LoRA and the hypernetwork then train on (hidden state, next token) pairs.

The base's weights come in as `Weights`: the token embeddings (features) and the LM head (logits), one tensor for a
tied head (the project's own GPT), two for an untied one (an imported Llama). A bare tensor means a tied head. The
tensors may live on a GPU; cached text sets stay on the CPU and each step moves the rows it needs.
"""
import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import log, save_atomic
from model import HyperNetwork


class Weights:
    """The base's token embeddings [V, d] (text features) and LM head [V, d] (logits = h · headᵀ); the same tensor
    when the head is tied."""

    def __init__(self, embeddings, head=None):
        self.embeddings = embeddings
        self.head = embeddings if head is None else head

    @property
    def device(self):
        return self.head.device


def as_weights(weights):
    """Weights as they are, or a bare tensor as a tied head (what the project's GPT has)."""
    return weights if isinstance(weights, Weights) else Weights(weights)


def base_weights(base):
    """The Weights of a base model: .embeddings and .head where it has them (an imported checkpoint), else the
    project's GPT's tied wte."""
    if hasattr(base, "embeddings") and hasattr(base, "head"):
        return Weights(base.embeddings.detach(), base.head.detach())
    return Weights(base.wte.weight.detach())


class TextSet:
    """Texts of one split with their features and the base's cached hidden states (one row per predicted token).

    Every text starts with a lead token that is conditioned on but never scored nor part of a feature: BOS, or,
    for a package without BOS, the piece's first token. `max_tokens` caps the tokens of one forward pass (a big
    model's attention over a batch of long texts does not fit otherwise); with `checkpoint`, the states computed
    so far are saved every `save_every` seconds and a rerun continues from them."""

    def __init__(self, base, texts, domains, chunk=64, max_tokens=None, checkpoint=None, save_every=120.0):
        weights = base_weights(base)
        self.token_ids = texts
        self.domains = domains
        self.features = text_features(weights, texts).cpu()
        lengths = [len(t) - 1 for t in texts]
        self.offsets = torch.tensor([0] + lengths).cumsum(0)
        device = weights.device
        hidden, targets = [], []
        base.eval()
        store = [None] * len(texts)
        if checkpoint is not None and os.path.exists(checkpoint):
            done = torch.load(checkpoint)
            if len(done["store"]) == len(texts):
                store = done["store"]
                log(f"cache hidden: resuming, {sum(s is not None for s in store)} of {len(texts)} texts done")
        saved = time.time()
        with torch.no_grad():
            order = [i for i in sorted(range(len(texts)), key=lambda i: len(texts[i])) if store[i] is None]
            bar = tqdm(total=sum(lengths[i] for i in order), desc="cache hidden", unit="tok", mininterval=10)
            for s in range(0, len(order), chunk):
                group = order[s:s + chunk]
                by_len = {}
                for i in group:
                    by_len.setdefault(len(texts[i]), []).append(i)
                for length, members in by_len.items():
                    per_pass = len(members) if max_tokens is None else max(1, max_tokens // length)
                    for p in range(0, len(members), per_pass):
                        part = members[p:p + per_pass]
                        x = torch.tensor([texts[i] for i in part])
                        h = base.hidden(x[:, :-1].to(device)).float().cpu()
                        for j, i in enumerate(part):
                            store[i] = (h[j], x[j, 1:])
                        bar.update(len(part) * (length - 1))
                        if checkpoint is not None and time.time() - saved > save_every:
                            save_atomic({"store": store}, checkpoint)
                            saved = time.time()
            bar.close()
            for h, y in store:
                hidden.append(h)
                targets.append(y)
        self.hidden = torch.cat(hidden)
        self.targets = torch.cat(targets)
        if checkpoint is not None and os.path.exists(checkpoint):
            os.remove(checkpoint)

    def __len__(self):
        return len(self.features)

    def token_rows(self, text_ids):
        return torch.cat([torch.arange(self.offsets[i], self.offsets[i + 1]) for i in text_ids])


def text_features(weights, texts):
    """L2-normalised mean token embedding of each text, BOS excluded (what the service computes)."""
    wte = as_weights(weights).embeddings
    feats = torch.stack([wte[torch.tensor(t[1:], device=wte.device)].mean(0) for t in texts])
    return F.normalize(feats, dim=-1)


def prompt_features(weights, texts, ids, lengths, kind="embedding"):
    """Features of prompts: text ids[k] cut to its first lengths[k] tokens after BOS (None: the whole text).

    kind "embedding": the L2-normalised mean token embedding (what the shipped service computes);
    kind "hidden": the L2-normalised mean of the base's final hidden states over the prompt's positions (BOS
    excluded), read from the cache; a served prefill can produce it before the head runs, since only the head
    is adapted. The last token of a text has no cached hidden state (nothing follows it), so a whole-text
    prompt averages the positions before it.
    """
    wte = as_weights(weights).embeddings
    feats = []
    for i, n in zip(ids, lengths):
        tokens = texts.token_ids[i]
        n = len(tokens) - 1 if n is None else n
        if kind == "embedding":
            feats.append(wte[torch.tensor(tokens[1:1 + n], device=wte.device)].mean(0))
        else:
            start = int(texts.offsets[i])
            last = min(n, int(texts.offsets[i + 1]) - start - 1)
            feats.append(texts.hidden[start + 1:start + 1 + max(1, last)].mean(0).to(wte.device))
    return F.normalize(torch.stack(feats), dim=-1)


class Stacked(torch.nn.Module):
    """Chameleon on top of a static LoRA: the generated factors are concatenated (along the rank) to fixed
    static ones, so the head gets the static update plus the dynamic one, and a zero dynamic update is exactly
    the static baseline."""

    def __init__(self, net, static):
        super().__init__()
        self.net = net
        self.register_buffer("static_a", static[0].clone())
        self.register_buffer("static_b", static[1].clone())

    def forward(self, context):
        a, b = self.net(context)
        k = a.shape[0]
        return (torch.cat([self.static_a.expand(k, -1, -1), a], 1), torch.cat([self.static_b.expand(k, -1, -1), b], 2))


class Gated(torch.nn.Module):
    """Chameleon on static with a fallback for contexts unlike any training domain: when a context's cosine
    similarity to every domain centroid of the training texts is below min_similarity, its dynamic update is
    zeroed and the static LoRA alone serves it (what the service does with the package's `hypernet.gate`).

    A hypernetwork maps an unfamiliar context to some update learnt for another domain; on a domain kept out of
    training that update cost up to 1.6x static LoRA's perplexity, while the static LoRA, trained on every
    domain at once, stays mild.

    With prior_tokens > 0, an admitted context made from n prompt tokens gets its dynamic update weighted
    n / (n + prior_tokens): shrinkage towards the static LoRA, as empirical Bayes shrinks a mean estimated from few
    samples towards its prior. A few short prompts give a noisy context, and the hypernetwork's full update for it
    overshoots, on unseen domains most of all."""

    def __init__(self, stacked, centroids, min_similarity, names, prior_tokens=0, constant_weight=None):
        super().__init__()
        self.stacked = stacked
        self.register_buffer("centroids", centroids.clone())
        self.min_similarity = min_similarity
        self.names = list(names)
        self.prior_tokens = prior_tokens
        self.constant_weight = constant_weight  # a validation control only (quality.py --prior-sweep), never exported

    def similarity(self, context):
        return (F.normalize(context, dim=-1) @ self.centroids.T).max(-1).values

    def forward(self, context, tokens=None):
        """tokens: the prompt tokens behind each context (None: no shrinkage, as for a context of unknown size)."""
        a, b = self.stacked(context)
        weight = (self.similarity(context) >= self.min_similarity).to(b.dtype)
        if self.constant_weight is not None:
            weight = weight * self.constant_weight
        elif self.prior_tokens > 0 and tokens is not None:
            tokens = torch.as_tensor(tokens, dtype=b.dtype, device=b.device)
            weight = weight * tokens / (tokens + self.prior_tokens)
        r = self.stacked.static_b.shape[-1]
        return a, torch.cat([b[:, :, :r], b[:, :, r:] * weight[:, None, None]], 2)


def adapters(net, contexts, tokens):
    """The network's factors for contexts made from `tokens` prompt tokens each (a gate with shrinkage uses them)."""
    with torch.no_grad():
        return net(contexts, tokens) if isinstance(net, Gated) else net(contexts)


def gated(net, train, gate):
    """A gate ({"min_similarity": t, "prior_tokens": n0}, as in a config's hypernet.gate) around a Chameleon-on-static network, its
    centroids taken from the training texts' features; the network itself when gate is None."""
    if not gate:
        return net
    if not isinstance(net, Stacked):
        raise ValueError("hypernet.gate needs hypernet.on_static: a gated context falls back to the static LoRA")
    names = sorted(set(train.domains))
    return Gated(net, domain_centroids(train.features, train.domains, names), gate["min_similarity"], names, gate.get("prior_tokens", 0),
                 gate.get("constant_weight")).to(net.static_a.device).eval()


def head_loss(weights, hidden, targets, a, b, scale, reduction="mean"):
    """Next-token loss of the LM head for G groups of n rows: hidden [G, n, d], targets [G, n] (moved to the head's
    device).

    Group g uses factors a[g] [r, d] and b[g] [V, r]; a is None for the base head.
    """
    head = as_weights(weights).head
    hidden, targets = hidden.to(head.device), targets.to(head.device)
    logits = hidden @ head.T
    if a is not None:
        logits = logits + scale * (hidden @ a.transpose(1, 2)) @ b.transpose(1, 2)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)


def kmeans(x, k, seed, iters=50):
    """Seeded k-means++ (the evaluation's stand-in for the service's ml-kmeans), on the CPU (its seeded generator)."""
    x = x.cpu()
    n = len(x)
    k = max(1, min(k, n))
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randint(n, (1,), generator=g)]
    for _ in range(1, k):
        d = torch.cdist(x, centers).min(1).values ** 2
        idx = torch.randint(n, (1,), generator=g) if d.sum() <= 0 else torch.multinomial(d / d.sum(), 1, generator=g)
        centers = torch.cat([centers, x[idx]])
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(1)
        new = torch.stack([x[assign == j].mean(0) if (assign == j).any() else centers[j] for j in range(k)])
        if torch.allclose(new, centers):
            break
        centers = new
    return assign


def train_static(weights, train, cfg, seed, desc="static lora"):
    """Static LoRA; by default with the hypernetwork's budget (steps, tokens per step), for a fair baseline.
    Returns the factors on the CPU."""
    weights = as_weights(weights)
    s = {"steps": cfg["hypernet"]["steps"], "tokens_per_step": cfg["hypernet"]["tokens_per_step"], **cfg["static"]}
    rank, d, vocab = cfg["lora"]["rank"], weights.head.shape[1], weights.head.shape[0]
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.Parameter((torch.randn(1, rank, d, generator=g) / math.sqrt(d)).to(weights.device))
    b = torch.nn.Parameter(torch.zeros(1, vocab, rank, device=weights.device))
    opt = torch.optim.Adam([a, b], lr=s["lr"])
    for step in tqdm(range(s["steps"]), desc=desc, mininterval=10):
        rows = torch.randint(len(train.targets), (s["tokens_per_step"],), generator=g)
        loss = head_loss(weights, train.hidden[rows][None], train.targets[rows][None], a, b, cfg["lora"]["scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, s["steps"] // 5) == 0:
            log(f"{desc} step {step + 1}: loss {loss.item():.3f}")
    return a.detach().cpu(), b.detach().cpu()


def group_context(weights, train, texts, prefix_context, g, kind="embedding"):
    """The mean member feature. With prefix_context, each member's feature comes from a random prefix of it
    (at least prefix_context["min_tokens"] tokens), as a served prompt would: the network then cannot count on
    seeing every token it is scored on, and learns what short prompts imply."""
    if not prefix_context:
        return prompt_features(weights, train, texts.tolist(), [None] * len(texts), kind).mean(0)
    lengths = []
    for i in texts.tolist():
        ids = train.token_ids[i]
        low = min(prefix_context["min_tokens"], len(ids) - 1)
        lengths.append(int(torch.randint(low, len(ids), (1,), generator=g).item()))
    return prompt_features(weights, train, texts.tolist(), lengths, kind).mean(0)


def hypernet_for(weights, cfg):
    """A fresh HyperNetwork of the config's shape for these base weights (the embedding basis, when asked for, is the
    LM head: B's rows are output tokens)."""
    weights = as_weights(weights)
    h = cfg["hypernet"]
    vocab, d = weights.head.shape
    return HyperNetwork(d, vocab, cfg["lora"]["rank"], h["hidden"], weights.head.cpu() if h.get("embedding_basis") else None)


def train_hypernet(weights, train, cfg, seed, static=None):
    """Paper-style batches: offline k-means over training features, every group drawn from one cluster.

    Group sizes vary so that the network also sees the small clusters (down to one text) that online
    windows and per-request adaptation produce. With static factors (hypernet.on_static), the network learns a
    dynamic update on top of that frozen static LoRA and the returned module outputs both, stacked. The module is
    returned on the weights' device.
    """
    weights = as_weights(weights)
    h = cfg["hypernet"]
    torch.manual_seed(seed)
    kind = h.get("context", "embedding")
    net = hypernet_for(weights, cfg).to(weights.device)
    opt = torch.optim.AdamW(net.parameters(), lr=h["lr"], weight_decay=h.get("weight_decay", 0.0))
    g = torch.Generator().manual_seed(seed)
    features = train.features if kind == "embedding" else prompt_features(weights, train, range(len(train)), [None] * len(train), kind)
    assign = kmeans(features, h["train_clusters"], seed)
    adapter = (Stacked(net, static) if static is not None else net).to(weights.device)
    members = [torch.nonzero(assign == j).flatten() for j in range(int(assign.max()) + 1)]
    members = [m for m in members if len(m) > 0]
    log(f"hypernet: {len(members)} training clusters of sizes {[len(m) for m in members]}")
    sizes = h["group_sizes"]
    per_group = h["tokens_per_step"] // h["groups_per_step"]
    for step in tqdm(range(h["steps"]), desc="hypernet", mininterval=10):
        contexts, rows = [], []
        for _ in range(h["groups_per_step"]):
            cluster = members[torch.randint(len(members), (1,), generator=g).item()]
            size = min(len(cluster), sizes[torch.randint(len(sizes), (1,), generator=g).item()])
            texts = cluster[torch.randperm(len(cluster), generator=g)[:size]]
            contexts.append(group_context(weights, train, texts, h.get("prefix_context"), g, kind))
            tokens = train.token_rows(texts.tolist())
            rows.append(tokens[torch.randint(len(tokens), (per_group,), generator=g)])
        a, b = adapter(torch.stack(contexts))
        rows = torch.stack(rows)
        loss = head_loss(weights, train.hidden[rows], train.targets[rows], a, b, cfg["lora"]["scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if (step + 1) % max(1, h["steps"] // 5) == 0:
            log(f"hypernet step {step + 1}: loss {loss.item():.3f}")
    adapter.eval()
    return adapter


# --- The seed's baselines: a modular LoRA library and LoRA*Mask ---------------------------------------------


def domain_centroids(features, domains, names):
    """L2-normalised mean feature of each domain's training texts: what a library entry is selected by."""
    return F.normalize(torch.stack([features[[i for i, d in enumerate(domains) if d == n]].mean(0) for n in names]), dim=-1)


def selector_weights(contexts, centroids, temperature):
    """Softmax over the cosine similarity of each context [K, d] to the domain centroids [D, d]; temperature 0 is
    the hard choice of the nearest centroid (one-hot)."""
    sims = F.normalize(contexts, dim=-1) @ centroids.T
    if temperature == 0:
        return F.one_hot(sims.argmax(-1), len(centroids)).float()
    return F.softmax(sims / temperature, dim=-1)


def train_library(weights, train, cfg, seed):
    """Modular LoRA library: one static LoRA per training domain, trained on that domain's texts only. The budget
    (steps x tokens per step) is the hypernetwork's, split evenly between the domains."""
    names = sorted(set(train.domains))
    steps = max(1, cfg["hypernet"]["steps"] // len(names))
    a_all, b_all = [], []
    for n, name in enumerate(names):
        texts = [i for i, d in enumerate(train.domains) if d == name]
        rows = train.token_rows(texts)
        domain = _RowSubset(train, rows)
        log(f"library: {name} ({len(texts)} texts, {steps} steps)")
        a, b = train_static(weights, domain, {**cfg, "hypernet": {**cfg["hypernet"], "steps": steps}}, seed + n, f"library {name}")
        a_all.append(a)
        b_all.append(b)
    return {"names": names, "lora_a": torch.cat(a_all), "lora_b": torch.cat(b_all),
            "centroids": domain_centroids(train.features, train.domains, names)}


class _RowSubset:
    """The (hidden state, target) rows of some texts, in the shape train_static samples from."""

    def __init__(self, texts, rows):
        self.hidden, self.targets = texts.hidden[rows], texts.targets[rows]


def train_masks(weights, train, cfg, seed):
    """LoRA*Mask as the seed describes it: one shared low-rank update (A, B) and, per training domain, a mask over
    every entry of A and of B (sigmoid of a learned logit). Each step trains the shared factors and one domain's
    mask on that domain's tokens; at inference the masks are blended by a softmax selector over the context
    (not co-optimised with them), so A_eff = A * sum_i w_i M_i^A and B_eff = B * sum_i w_i M_i^B (rank r).
    Same budget as the hypernetwork."""
    weights = as_weights(weights)
    names = sorted(set(train.domains))
    h = cfg["hypernet"]
    rank, d, vocab = cfg["lora"]["rank"], weights.head.shape[1], weights.head.shape[0]
    device = weights.device
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.Parameter((torch.randn(1, rank, d, generator=g) / math.sqrt(d)).to(device))
    b = torch.nn.Parameter(torch.zeros(1, vocab, rank, device=device))
    mask_a = torch.nn.Parameter(torch.full((len(names), rank, d), 3.0, device=device))
    mask_b = torch.nn.Parameter(torch.full((len(names), vocab, rank), 3.0, device=device))
    rows_of = [train.token_rows([i for i, dd in enumerate(train.domains) if dd == n]) for n in names]
    opt = torch.optim.Adam([a, b, mask_a, mask_b], lr=cfg["static"]["lr"])
    for step in tqdm(range(h["steps"]), desc="masks", mininterval=10):
        k = step % len(names)
        pick = rows_of[k][torch.randint(len(rows_of[k]), (h["tokens_per_step"],), generator=g)]
        ma, mb = torch.sigmoid(mask_a[k:k + 1]), torch.sigmoid(mask_b[k:k + 1])
        loss = head_loss(weights, train.hidden[pick][None], train.targets[pick][None], a * ma, b * mb, cfg["lora"]["scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, h["steps"] // 5) == 0:
            log(f"masks step {step + 1}: loss {loss.item():.3f}")
    return {"names": names, "lora_a": a.detach().cpu(), "lora_b": b.detach().cpu(), "mask_a": torch.sigmoid(mask_a).detach().cpu(),
            "mask_b": torch.sigmoid(mask_b).detach().cpu(), "centroids": domain_centroids(train.features, train.domains, names)}


def library_factors(library, weights, combine):
    """Factors of library adapters for K contexts' selector weights [K, D].

    combine "nearest": the entry with the largest weight (rank r). combine "weighted": the exact weighted sum of the
    entries' updates, sum_i w_i B_i A_i, written as one LoRA of rank D*r (A's stacked, B's scaled by w_i)."""
    a, b = library["lora_a"], library["lora_b"]
    if combine == "nearest":
        pick = weights.argmax(-1)
        return a[pick], b[pick]
    k, count = weights.shape
    stacked_a = a.reshape(1, -1, a.shape[-1]).expand(k, -1, -1)
    scaled_b = (b[None] * weights[:, :, None, None]).permute(0, 2, 1, 3).reshape(k, b.shape[1], -1)
    return stacked_a, scaled_b


def mask_factors(masks, weights):
    """LoRA*Mask factors for K contexts' selector weights [K, D]: the shared update under the blended masks."""
    blend_a = torch.einsum("kd,drc->krc", weights, masks["mask_a"])
    blend_b = torch.einsum("kd,dvr->kvr", weights, masks["mask_b"])
    return masks["lora_a"] * blend_a, masks["lora_b"] * blend_b
