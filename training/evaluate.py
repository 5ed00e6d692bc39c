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


def groups_for(method, texts, eval_cfg, seed):
    """Lists of text indices that share one adapter, as the service (or an oracle) would form them."""
    n = len(texts)
    window = eval_cfg["window"]
    if method == "chameleon_request":
        return [[i] for i in range(n)]
    if method == "chameleon_windows":
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        groups = []
        for w, start in enumerate(range(0, n, window)):
            ids = order[start:start + window]
            assign = kmeans(texts.features[ids], window_size_clusters(len(ids), eval_cfg), seed + w)
            for j in range(int(assign.max()) + 1):
                members = [ids[m] for m in torch.nonzero(assign == j).flatten().tolist()]
                if members:
                    groups.append(members)
        return groups
    if method == "chameleon_oracle":
        groups = []
        g = torch.Generator().manual_seed(seed)
        for domain in sorted(set(texts.domains)):
            ids = [i for i in range(n) if texts.domains[i] == domain]
            ids = [ids[k] for k in torch.randperm(len(ids), generator=g).tolist()]
            groups.extend(ids[s:s + window] for s in range(0, len(ids), window))
        return groups
    raise ValueError(method)


def perplexities(wte, texts, method, static, hypernet, cfg, seed):
    nll = {}
    count = {}
    scale = cfg["lora"]["scale"]

    def add(text_ids, a, b):
        with torch.no_grad():
            for i in text_ids:
                rows = texts.token_rows([i])
                loss = head_loss(wte, texts.hidden[rows][None], texts.targets[rows][None], a, b, scale, reduction="sum").item()
                domain = texts.domains[i]
                nll[domain] = nll.get(domain, 0.0) + loss
                count[domain] = count.get(domain, 0) + len(rows)

    if method == "base":
        add(range(len(texts)), None, None)
    elif method == "static":
        add(range(len(texts)), *static)
    else:
        groups = groups_for(method, texts, cfg["eval"], seed)
        with torch.no_grad():
            contexts = torch.stack([texts.features[g].mean(0) for g in groups])
            a_all, b_all = hypernet(contexts)
        for k, group in enumerate(groups):
            add(group, a_all[k:k + 1], b_all[k:k + 1])
    table = {d: math.exp(nll[d] / count[d]) for d in sorted(nll)}
    table["overall"] = math.exp(sum(nll.values()) / sum(count.values()))
    table["tokens"] = sum(count.values())
    return table


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
    scale = cfg["lora"]["scale"]
    window, eval_cfg = cfg["eval"]["window"], cfg["eval"]
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    window_groups = []
    for w, start in enumerate(range(0, len(order), window)):
        ids = order[start:start + window]
        assign = kmeans(prefix_features[ids], window_size_clusters(len(ids), eval_cfg), seed + w)
        window_groups += [[ids[m] for m in torch.nonzero(assign == j).flatten().tolist()] for j in range(int(assign.max()) + 1)]
    window_groups = [g for g in window_groups if g]
    plans = {
        "static": [(list(range(len(texts))), None)],
        "chameleon_windows": [(g, prefix_features[g].mean(0)) for g in window_groups],
        "chameleon_request": [([i], prefix_features[i]) for i in range(len(texts))],
    }
    results = {}
    with torch.no_grad():
        for method, plan in plans.items():
            if method == "static":
                adapters = [static]
            else:
                a_all, b_all = hypernet(torch.stack([c for _, c in plan]))
                adapters = [(a_all[k:k + 1], b_all[k:k + 1]) for k in range(len(plan))]
            nll, count = {}, {}
            for (group, _), (a, b) in zip(plan, adapters):
                for i in group:
                    rows = texts.token_rows([i])[halves[i]:]
                    loss = head_loss(wte, texts.hidden[rows][None], texts.targets[rows][None], a, b, scale, reduction="sum").item()
                    d = texts.domains[i]
                    nll[d] = nll.get(d, 0.0) + loss
                    count[d] = count.get(d, 0) + len(rows)
            table = {d: math.exp(nll[d] / count[d]) for d in sorted(nll)}
            table["overall"] = math.exp(sum(nll.values()) / sum(count.values()))
            results[method] = table
    return results
