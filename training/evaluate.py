"""Token-weighted perplexity of base, static LoRA and ChameleonLLM under several batching regimes.

`weights` is the base's `adapt.Weights` (embeddings for features, head for logits) or a bare tensor for a tied head;
the factors, networks and baselines passed in live on the weights' device, the text sets on the CPU.
"""
import math

import torch

from adapt import adapters, as_weights, head_loss, kmeans

METHODS = ("base", "static", "chameleon_windows", "chameleon_oracle", "chameleon_request")
# The seed's baselines, served as modes: each cluster of a window (as for chameleon_windows) gets its adapter
# from a selector over its context instead of from the hypernetwork.
BASELINES = ("library", "library_weighted", "masks")
LABELS = {
    "base": "base (no adaptation)",
    "static": "static LoRA",
    "chameleon_windows": "Chameleon, random windows + k-means",
    "chameleon_oracle": "Chameleon, oracle one-domain batches",
    "chameleon_request": "Chameleon, per request (cluster of one)",
    "library": "LoRA library, nearest domain (windows + k-means)",
    "library_weighted": "LoRA library, softmax-weighted (windows + k-means)",
    "masks": "LoRA*Mask, softmax-blended masks (windows + k-means)",
}


def baseline_adapters(library, masks, temperatures):
    """{method: contexts [K, d] -> (a [K, r, d], b [K, V, r])} for the library and mask baselines."""
    from adapt import library_factors, mask_factors, selector_weights
    out = {}
    if library is not None:
        out["library"] = lambda c: library_factors(library, selector_weights(c, library["centroids"], 0), "nearest")
        out["library_weighted"] = lambda c: library_factors(library, selector_weights(c, library["centroids"], temperatures["library_weighted"]), "weighted")
    if masks is not None:
        out["masks"] = lambda c: mask_factors(masks, selector_weights(c, masks["centroids"], temperatures["masks"]))
    return out


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


def perplexity_table(weights, texts, assignments, scale, scored_rows=None):
    """assignments: (text ids, a, b) triples sharing one adapter; scored_rows(i): the token rows of text i to score."""
    scored_rows = scored_rows or (lambda i: texts.token_rows([i]))
    nll, count = {}, {}
    with torch.no_grad():
        for group, a, b in assignments:
            for i in group:
                rows = scored_rows(i)
                loss = head_loss(weights, texts.hidden[rows][None], texts.targets[rows][None], a, b, scale, reduction="sum").item()
                domain = texts.domains[i]
                nll[domain] = nll.get(domain, 0.0) + loss
                count[domain] = count.get(domain, 0) + len(rows)
    table = {d: math.exp(nll[d] / count[d]) for d in sorted(nll)}
    table["overall"] = math.exp(sum(nll.values()) / sum(count.values()))
    table["tokens"] = sum(count.values())
    return table


def hypernet_assignments(hypernet, groups, contexts, tokens=None):
    a_all, b_all = adapters(hypernet, contexts, tokens)
    return [(group, a_all[k:k + 1], b_all[k:k + 1]) for k, group in enumerate(groups)]


def perplexities(weights, texts, method, static, hypernet, cfg, seed, baselines=None):
    everything = list(range(len(texts)))
    device = as_weights(weights).device
    if method == "base":
        assignments = [(everything, None, None)]
    elif method == "static":
        assignments = [(everything, *static)]
    elif method in BASELINES:
        groups = window_clusters(texts.features, cfg["eval"], seed)
        assignments = hypernet_assignments(baselines[method], groups, torch.stack([texts.features[g].mean(0) for g in groups]).to(device))
    else:
        groups = groups_for(method, texts, cfg["eval"], seed)
        tokens = [sum(len(texts.token_ids[i]) - 1 for i in g) for g in groups]
        assignments = hypernet_assignments(hypernet, groups, torch.stack([texts.features[g].mean(0) for g in groups]).to(device), tokens)
    return perplexity_table(weights, texts, assignments, cfg["lora"]["scale"])


def evaluate_all(weights, sets, static, hypernet, cfg, seed, baselines=None):
    """sets: {"M": TextSet, "P": TextSet} → {method: {"M": table, "P": table}}."""
    methods = METHODS + tuple(m for m in BASELINES if m in (baselines or {}))
    return {m: {name: perplexities(weights, ts, m, static, hypernet, cfg, seed, baselines) for name, ts in sets.items()} for m in methods}


def markdown_table(results, domains_m, domains_p, overall="M overall"):
    head = "| method | " + " | ".join(domains_m) + f" | {overall} |" + "".join(f" P {d} |" for d in domains_p)
    rule = "|" + "---|" * (len(domains_m) + len(domains_p) + 2)
    lines = [head, rule]
    for m in results:
        r = results[m]
        cells = [f"{r['M'][d]:.2f}" for d in domains_m] + [f"**{r['M']['overall']:.2f}**"] + [f"{r['P'][d]:.2f}" for d in domains_p]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(echo, continuation, unseen, domains_m, split, path, other="P (Brown)"):
    """Three panels: echo perplexity per M domain and on P (when the tables have a P set); prompt -> continuation ratio
    to static per prompt length; the same ratio on each domain kept out of a run's training (when such runs exist),
    with the gate (alone, and with its shrinkage when the run was scored both ways)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = list(domains_m) + ["overall"]
    methods = list(echo)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [len(columns) + 1.6, 3, 2.4]})
    width = 0.8 / len(methods)
    for n, m in enumerate(methods):
        xs = [c + (n - len(methods) / 2 + 0.5) * width for c in range(len(columns))]
        axes[0].bar(xs, [echo[m]["M"][c] for c in columns] , width, label=LABELS[m])
        if "P" in echo[m]:
            axes[0].bar([len(columns) + 0.3 + n * width], [echo[m]["P"]["overall"]], width, color=f"C{n}")
    with_p = "P" in echo[methods[0]]
    axes[0].set_xticks(list(range(len(columns))) + ([len(columns) + 0.6] if with_p else []), columns + ([other] if with_p else []))
    axes[0].set_ylabel(f"perplexity ({split}, token-weighted)")
    axes[0].set_title("Echo: every position scored")
    axes[0].legend(fontsize=7)
    prompts = list(continuation)
    for m in [m for m in CONTINUATION_METHODS if m not in ("base", "static") and m in continuation[prompts[0]]]:
        axes[1].plot(prompts, [continuation[p][m]["overall"] / continuation[p]["static"]["overall"] for p in prompts], marker="o", label=m)
    axes[1].axhline(1.0, color="gray", lw=0.8)
    axes[1].axhline(0.9, color="gray", lw=0.8, ls="--")
    axes[1].set_xlabel("prompt tokens")
    axes[1].set_ylabel("continuation perplexity / static LoRA")
    axes[1].set_title(f"Prompt -> continuation ({split})")
    axes[1].legend(fontsize=7)
    if unseen:
        for n, run in enumerate(unseen):
            final = run["final"]
            if final is None:
                continue
            # without a gate these runs reach 1.2-2.5x static (tables in the README); the panel compares the gates
            for scored, style in ((run.get("final_gate_only"), "--"), (final, "-")):
                if scored is None:
                    continue
                split = next(iter(scored["gated"]))
                gate = f"gate {scored['min_similarity']}" + (f", prior {scored['prior_tokens']}" if scored.get("prior_tokens") else "")
                c = scored["gated"][split]["continuation"]
                axes[2].plot(list(c), [c[p]["chameleon_windows"]["overall"] / c[p]["static"]["overall"] for p in c], marker="s", ls=style,
                             color=f"C{n}", label=f"{run['held_out']} ({split.removeprefix('unseen_')}), {gate}")
        axes[2].axhline(1.0, color="gray", lw=0.8)
        axes[2].axhline(1.02, color="gray", lw=0.8, ls="--")
        axes[2].set_xlabel("prompt tokens")
        axes[2].set_title("Unseen domains (gated)")
        axes[2].set_ylabel("windows / static LoRA")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def held_out_context(weights, texts, static, hypernet, cfg, seed):
    """The generation setting: the adapter sees only the first half of each text, the second half is scored.

    Unlike the main table (where, as in the paper, a text's own tokens are part of its cluster context), no
    scored token is visible to the hypernetwork here.
    """
    from adapt import text_features

    halves = [max(1, (len(ids) - 1) // 2) for ids in texts.token_ids]
    prefix_features = text_features(weights, [ids[:1 + h] for ids, h in zip(texts.token_ids, halves)])
    window_groups = window_clusters(prefix_features, cfg["eval"], seed)
    requests = [[i] for i in range(len(texts))]
    plans = {
        "static": [(list(range(len(texts))), *static)],
        "chameleon_windows": hypernet_assignments(hypernet, window_groups, torch.stack([prefix_features[g].mean(0) for g in window_groups]),
                                                  [sum(halves[i] for i in g) for g in window_groups]),
        "chameleon_request": hypernet_assignments(hypernet, requests, prefix_features, halves),
    }

    def second_half(i):
        return texts.token_rows([i])[halves[i]:]

    return {method: perplexity_table(weights, texts, plan, cfg["lora"]["scale"], second_half) for method, plan in plans.items()}


# --- Prompt -> continuation (the primary metric) -----------------------------------------------------------

PROMPT_LENGTHS = (16, 32, 64, 128)
CONTINUATION_METHODS = ("base", "static", "chameleon_windows", "chameleon_oracle", "chameleon_request") + BASELINES


def continuation_plans(weights, texts, prompt_tokens, static, hypernet, cfg, seed, kind="embedding", baselines=None):
    """For each method, the adapter of every eligible text when the adapter sees only its first prompt_tokens
    tokens (after BOS) and the rest is scored. Eligible: texts with at least one token after the prompt.

    Windows model the service: 32 random prompts, split by k-means on their prompt features, each cluster
    adapted to its mean feature. Oracle: one-domain windows of 32, one context each. Returns
    ({method: (factor a [K, r, d], factor b [K, V, r], group index per eligible text)}, eligible ids).
    """
    from adapt import prompt_features

    ids = [i for i in range(len(texts)) if len(texts.token_ids[i]) - 1 > prompt_tokens]
    feats = prompt_features(weights, texts, ids, [prompt_tokens] * len(ids), kind)
    pos = {i: k for k, i in enumerate(ids)}
    plans = {}
    if static is not None:
        plans["static"] = (static[0], static[1], [0] * len(ids))
    if hypernet is not None:
        window_groups = [[ids[k] for k in g] for g in window_clusters(feats, cfg["eval"], seed)]
        sub = texts_subset_domains(texts, ids)
        oracle = [[ids[k] for k in g] for g in groups_for("chameleon_oracle", sub, cfg["eval"], seed)]
        for method, groups in (("chameleon_windows", window_groups), ("chameleon_oracle", oracle), ("chameleon_request", [[i] for i in ids])):
            contexts = torch.stack([feats[[pos[i] for i in g]].mean(0) for g in groups])
            a, b = adapters(hypernet, contexts, [len(g) * prompt_tokens for g in groups])
            index = [0] * len(ids)
            for k, g in enumerate(groups):
                for i in g:
                    index[pos[i]] = k
            plans[method] = (a, b, index)
    window_groups = [[pos[i] for i in g] for g in window_groups] if hypernet is not None else window_clusters(feats, cfg["eval"], seed)
    for method, make in (baselines or {}).items():
        with torch.no_grad():
            a, b = make(torch.stack([feats[g].mean(0) for g in window_groups]))
        index = [0] * len(ids)
        for k, g in enumerate(window_groups):
            for j in g:
                index[j] = k
        plans[method] = (a, b, index)
    return plans, ids


class texts_subset_domains:
    """The domains of a subset of texts, in the shape groups_for's oracle branch reads (len and .domains)."""

    def __init__(self, texts, ids):
        self.domains = [texts.domains[i] for i in ids]

    def __len__(self):
        return len(self.domains)


def continuation_tables(weights, texts, prompt_lengths, static, hypernet, cfg, seed, kind="embedding", baselines=None):
    """{prompt_tokens: {method: {domain: ppl, "overall": ppl, "tokens": n}}}: perplexity of the continuation.

    The base logits of a text are computed once and shared by every (prompt length, method); only the
    low-rank update differs.
    """
    jobs = []  # (prompt_tokens, method, factors, group index by text id)
    for p in prompt_lengths:
        plans, ids = continuation_plans(weights, texts, p, static, hypernet, cfg, seed, kind, baselines)
        jobs.append((p, "base", None, {i: None for i in ids}))
        for method, (a, b, index) in plans.items():
            jobs.append((p, method, (a, b), dict(zip(ids, index))))
    nll, count = score_jobs(weights, texts, jobs, cfg["lora"]["scale"])
    tables = {}
    for p in prompt_lengths:
        tables[p] = {}
        for method in CONTINUATION_METHODS:
            keys = [k for k in nll if k[0] == p and k[1] == method]
            if not keys:
                continue
            tables[p][method] = _table(nll, count, keys)
    return tables


def _table(nll, count, keys):
    row = {k[2]: math.exp(nll[k] / count[k]) for k in sorted(keys)}
    row["overall"] = math.exp(sum(nll[k] for k in keys) / sum(count[k] for k in keys))
    row["tokens"] = sum(count[k] for k in keys)
    return row


def score_jobs(weights, texts, jobs, scale):
    """Continuation NLL of scoring jobs (prompt_tokens, key, factors (a, b) or None, {text id: group index}), keyed by
    (prompt_tokens, key, domain) with their token counts; each text's base logits are computed once for all jobs."""
    head = as_weights(weights).head
    nll, count = {}, {}
    with torch.no_grad():
        for i in range(len(texts)):
            if not any(i in job[3] for job in jobs):
                continue
            rows = texts.token_rows([i])
            h, y = texts.hidden[rows].to(head.device), texts.targets[rows].to(head.device)
            base_logits = h @ head.T
            for p, method, factors, index in jobs:
                if i not in index:
                    continue
                hp, yp, logits = h[p:], y[p:], base_logits[p:]
                if factors is not None:
                    k = index[i]
                    a, b = factors[0][k], factors[1][k]
                    logits = logits + scale * (hp @ a.T) @ b.T
                key = (p, method, texts.domains[i])
                nll[key] = nll.get(key, 0.0) + torch.nn.functional.cross_entropy(logits, yp, reduction="sum").item()
                count[key] = count.get(key, 0) + len(yp)
    return nll, count


def continuation_variants(weights, texts, prompt_tokens, variants, cfg, seed, kind="embedding", methods=None):
    """{variant: {method: table}} at one prompt length, for validation sweeps: each variant is (static, hypernet,
    baselines) planned as continuation_tables plans them (the same texts, windows and k-means for every variant),
    and each text's base logits are computed once for all variants (a big vocabulary makes them the costly part).
    methods: the methods to score (default: all)."""
    jobs = []
    for name, (static, hypernet, baselines) in variants.items():
        plans, ids = continuation_plans(weights, texts, prompt_tokens, static, hypernet, cfg, seed, kind, baselines)
        for method, (a, b, index) in plans.items():
            if methods is None or method in methods:
                jobs.append((prompt_tokens, (name, method), (a, b), dict(zip(ids, index))))
    nll, count = score_jobs(weights, texts, jobs, cfg["lora"]["scale"])
    out = {}
    for name in variants:
        out[name] = {}
        for method in CONTINUATION_METHODS:
            keys = [k for k in nll if k[1] == (name, method)]
            if keys:
                out[name][method] = _table(nll, count, keys)
    return out


SELECTOR_TEMPERATURES = (0.02, 0.05, 0.1, 0.3)


def select_temperatures(weights, val, library, masks, cfg, prompt_tokens, seed=None):
    """The selectors' softmax temperature of library_weighted and masks, chosen on validation (continuation
    perplexity at the target prompt length, lowest wins). Returns ({"library_weighted": t, "masks": t} for the
    baselines there are, {str(t): {method: perplexity}})."""
    from common import log
    seed = cfg["seed"] if seed is None else seed
    grid = cfg.get("selector_temperatures", SELECTOR_TEMPERATURES)
    variants = {str(t): (None, None, baseline_adapters(library, masks, {"library_weighted": t, "masks": t})) for t in grid}
    tables = continuation_variants(weights, val, prompt_tokens, variants, cfg, seed)
    scores = {}
    for t in grid:
        scores[str(t)] = {m: tables[str(t)][m]["overall"] for m in variants[str(t)][2]}
        log(f"selector temperature {t}: " + ", ".join(f"{m} {v:.2f}" for m, v in scores[str(t)].items()))
    methods = [m for m in ("library_weighted", "masks") if m in scores[str(grid[0])]]
    chosen = {m: float(min(scores, key=lambda t: scores[t][m])) for m in methods}
    return chosen, scores


def continuation_markdown(tables):
    """One row per prompt length: overall continuation perplexity per method, and the ratios the evaluation reports."""
    methods = [m for m in CONTINUATION_METHODS if m in next(iter(tables.values()))]
    head = "| prompt tokens | " + " | ".join(methods) + " | windows / static | windows / per request |"
    lines = [head, "|" + "---|" * (len(methods) + 3)]
    for p, row in tables.items():
        cells = [f"{row[m]['overall']:.2f}" for m in methods]
        ratio = lambda a, b: f"{row[a]['overall'] / row[b]['overall']:.3f}" if a in row and b in row else "-"  # noqa: E731
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {ratio('chameleon_windows', 'static')} | {ratio('chameleon_windows', 'chameleon_request')} |")
    return "\n".join(lines)


# --- Adapters made from examples --------------------------------------------------------------------------

EXAMPLE_COUNTS = (8, 32, 128)


def examples_table(weights, train, texts, prompt_tokens, static, hypernet, cfg, seed, counts=EXAMPLE_COUNTS):
    """Per domain, an adapter made by the hypernetwork from N example texts of that domain (the mean of their
    features, as POST /v1/adapters computes it), drawn from the training split, scored on that domain's held-out
    texts after their first prompt_tokens tokens, beside static LoRA and Chameleon windows on the same texts.

    Returns {"N examples": {domain: ppl, "overall": ppl, "tokens": n}, "static": ..., "chameleon_windows": ...}.
    """
    g = torch.Generator().manual_seed(seed)
    head = as_weights(weights).head
    domains = sorted(set(texts.domains))
    plans, ids = continuation_plans(weights, texts, prompt_tokens, static, hypernet, cfg, seed)
    made = {}
    for n in counts:
        contexts, tokens = [], []
        for d in domains:
            pool = [i for i, dd in enumerate(train.domains) if dd == d]
            pick = [pool[k] for k in torch.randperm(len(pool), generator=g)[:n].tolist()]
            contexts.append(train.features[pick].mean(0))
            tokens.append(sum(len(train.token_ids[i]) - 1 for i in pick))
        a, b = adapters(hypernet, torch.stack(contexts).to(head.device), tokens)
        made[f"{n} examples"] = (a, b, [domains.index(texts.domains[i]) for i in ids])
    rows = {**made, "static": plans["static"], "chameleon_windows": plans["chameleon_windows"]}
    scale = cfg["lora"]["scale"]
    out = {}
    with torch.no_grad():
        for name, (a, b, index) in rows.items():
            nll, count = {}, {}
            for k, i in enumerate(ids):
                r = texts.token_rows([i])[prompt_tokens:]
                h, y = texts.hidden[r].to(head.device), texts.targets[r].to(head.device)
                logits = h @ head.T + scale * (h @ a[index[k]].T) @ b[index[k]].T
                d = texts.domains[i]
                nll[d] = nll.get(d, 0.0) + torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
                count[d] = count.get(d, 0) + len(y)
            row = {d: math.exp(nll[d] / count[d]) for d in sorted(nll)}
            row["overall"] = math.exp(sum(nll.values()) / sum(count.values()))
            row["tokens"] = sum(count.values())
            out[name] = row
    return out


def examples_markdown(table):
    domains = [d for d in next(iter(table.values())) if d not in ("overall", "tokens")]
    lines = ["| adapter | " + " | ".join(domains) + " | overall | / static | / windows |", "|" + "---|" * (len(domains) + 4)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[d]:.2f}" for d in domains) + f" | **{row['overall']:.2f}** | "
                     f"{row['overall'] / table['static']['overall']:.3f} | {row['overall'] / table['chameleon_windows']['overall']:.3f} |")
    return "\n".join(lines)
