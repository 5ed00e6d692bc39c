"""Token-weighted perplexity of base, static LoRA and ChameleonLLM under several batching regimes."""
import math

import torch

from adapt import head_loss, kmeans

METHODS = ("base", "static", "chameleon_windows", "chameleon_oracle", "chameleon_request")
LABELS = {
    "base": "base (no adaptation)",
    "static": "static LoRA",
    "chameleon_windows": "Chameleon, random windows + k-means",
    "chameleon_oracle": "Chameleon, oracle one-domain batches",
    "chameleon_request": "Chameleon, per request (cluster of one)",
}


def window_size_clusters(n, eval_cfg):
    return max(1, min(math.ceil(n / eval_cfg["target_cluster_size"]), eval_cfg["max_clusters"]))


def window_clusters(features, eval_cfg, seed):
    """Windows of the shuffled stream, each split by seeded k-means on the given features (what the service does)."""
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed)).tolist()
    window = eval_cfg["window"]
    groups = []
    for w, start in enumerate(range(0, len(order), window)):
        ids = order[start:start + window]
        assign = kmeans(features[ids], window_size_clusters(len(ids), eval_cfg), seed + w)
        groups += [[ids[m] for m in torch.nonzero(assign == j).flatten().tolist()] for j in range(int(assign.max()) + 1)]
    return [g for g in groups if g]


def groups_for(method, texts, eval_cfg, seed):
    """Lists of text indices that share one adapter, as the service (or an oracle) would form them."""
    n = len(texts)
    window = eval_cfg["window"]
    if method == "chameleon_request":
        return [[i] for i in range(n)]
    if method == "chameleon_windows":
        return window_clusters(texts.features, eval_cfg, seed)
    if method == "chameleon_oracle":
        groups = []
        g = torch.Generator().manual_seed(seed)
        for domain in sorted(set(texts.domains)):
            ids = [i for i in range(n) if texts.domains[i] == domain]
            ids = [ids[k] for k in torch.randperm(len(ids), generator=g).tolist()]
            groups.extend(ids[s:s + window] for s in range(0, len(ids), window))
        return groups
    raise ValueError(method)


def perplexity_table(wte, texts, assignments, scale, scored_rows=None):
    """assignments: (text ids, a, b) triples sharing one adapter; scored_rows(i): the token rows of text i to score."""
    scored_rows = scored_rows or (lambda i: texts.token_rows([i]))
    nll, count = {}, {}
    with torch.no_grad():
        for group, a, b in assignments:
            for i in group:
                rows = scored_rows(i)
                loss = head_loss(wte, texts.hidden[rows][None], texts.targets[rows][None], a, b, scale, reduction="sum").item()
                domain = texts.domains[i]
                nll[domain] = nll.get(domain, 0.0) + loss
                count[domain] = count.get(domain, 0) + len(rows)
    table = {d: math.exp(nll[d] / count[d]) for d in sorted(nll)}
    table["overall"] = math.exp(sum(nll.values()) / sum(count.values()))
    table["tokens"] = sum(count.values())
    return table


def hypernet_assignments(hypernet, groups, contexts):
    with torch.no_grad():
        a_all, b_all = hypernet(contexts)
    return [(group, a_all[k:k + 1], b_all[k:k + 1]) for k, group in enumerate(groups)]


def perplexities(wte, texts, method, static, hypernet, cfg, seed):
    everything = list(range(len(texts)))
    if method == "base":
        assignments = [(everything, None, None)]
    elif method == "static":
        assignments = [(everything, *static)]
    else:
        groups = groups_for(method, texts, cfg["eval"], seed)
        assignments = hypernet_assignments(hypernet, groups, torch.stack([texts.features[g].mean(0) for g in groups]))
    return perplexity_table(wte, texts, assignments, cfg["lora"]["scale"])


def evaluate_all(wte, sets, static, hypernet, cfg, seed):
    """sets: {"M": TextSet, "P": TextSet} → {method: {"M": table, "P": table}}."""
    return {m: {name: perplexities(wte, ts, m, static, hypernet, cfg, seed) for name, ts in sets.items()} for m in METHODS}


def markdown_table(results, domains_m, domains_p):
    head = "| method | " + " | ".join(domains_m) + " | M overall | " + " | ".join(f"P {d}" for d in domains_p) + " |"
    rule = "|" + "---|" * (len(domains_m) + len(domains_p) + 2)
    lines = [head, rule]
    for m in METHODS:
        r = results[m]
        cells = [f"{r['M'][d]:.2f}" for d in domains_m] + [f"**{r['M']['overall']:.2f}**"] + [f"{r['P'][d]:.2f}" for d in domains_p]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, domains_m, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = list(domains_m) + ["overall"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [len(columns), 1.6]})
    width = 0.8 / len(METHODS)
    for n, m in enumerate(METHODS):
        xs = [c + (n - len(METHODS) / 2 + 0.5) * width for c in range(len(columns))]
        axes[0].bar(xs, [results[m]["M"][c] for c in columns], width, label=LABELS[m])
        axes[1].bar([n * width], [results[m]["P"]["overall"]], width)
    axes[0].set_xticks(range(len(columns)), columns)
    axes[0].set_ylabel("perplexity (test, token-weighted)")
    axes[0].set_title("Adaptation mixture M")
    axes[0].legend(fontsize=8)
    axes[1].set_xticks([])
    axes[1].set_title("Pretraining domain P (Brown)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def held_out_context(wte, texts, static, hypernet, cfg, seed):
    """The generation setting: the adapter sees only the first half of each text, the second half is scored.

    Unlike the main table (where, as in the paper, a text's own tokens are part of its cluster context), no
    scored token is visible to the hypernetwork here.
    """
    from adapt import text_features

    halves = [max(1, (len(ids) - 1) // 2) for ids in texts.token_ids]
    prefix_features = text_features(wte, [ids[:1 + h] for ids, h in zip(texts.token_ids, halves)])
    window_groups = window_clusters(prefix_features, cfg["eval"], seed)
    requests = [[i] for i in range(len(texts))]
    plans = {
        "static": [(list(range(len(texts))), *static)],
        "chameleon_windows": hypernet_assignments(hypernet, window_groups, torch.stack([prefix_features[g].mean(0) for g in window_groups])),
        "chameleon_request": hypernet_assignments(hypernet, requests, prefix_features),
    }

    def second_half(i):
        return texts.token_rows([i])[halves[i]:]

    return {method: perplexity_table(wte, texts, plan, cfg["lora"]["scale"], second_half) for method, plan in plans.items()}
