/**
 * Do clusters of chat requests separate domains as well as clusters of plain prompts? The same validation snippets of
 * the default package's four adaptation domains are sent, one round of concurrent requests per batch window, four
 * ways:
 *
 *   plain      POST /v1/completions, the snippet as the prompt;
 *   chat       POST /v1/chat/completions, a shared system prompt and the snippet as the user message (what the
 *              server clusters on: the user/assistant contents, no template, no system prompt);
 *   template   POST /v1/completions, the whole chat prompt as the template renders it, as token ids (no BOS added):
 *              what clustering on the rendered template would do (the chat route renders the same text);
 *   plain again  the plain requests once more, in a window of their own: k-means++ is seeded per window (KMEANS_SEED
 *              + the batch number) and starts from the prompts in arrival order, so this is how much two windows of
 *              the very same features disagree (plain and chat features are the same: a plain prompt's BOS is not
 *              part of its feature).
 *
 * Every request is `adaptation: 'batch'`, greedy, max_tokens 1. Rounds alternate the ways, so machine noise falls on
 * each alike. Each response's chameleon.batch_id and cluster_index give the partition of its window; printed per way:
 * windows, requests, mean clusters per window, cluster purity (the fraction of requests whose cluster's majority
 * domain is their own; ± its standard error over windows), chance purity (the same clusters with the domains
 * shuffled within the window), and the mean adjusted Rand index and NMI per window against the domains; then how
 * much the ways' partitions of the same snippets agree (ARI). The cosine columns are the mean cosine similarity of
 * the features (computed here as the server computes them) of two requests of a round of the same domain and of
 * different domains: how alike a way makes the requests look. The last two are what the adapters were made from:
 * the mean chameleon.context_similarity (the cluster context's best cosine to a training domain's centroid) and the
 * fraction of requests the context gate sent to the static LoRA (chameleon.gated).
 *
 *   npm run bench:chat-clusters
 *   CHAT_CLUSTERS_ROUNDS=20 CHAT_CLUSTERS_PER_DOMAIN=8 CHAT_CLUSTERS_SYSTEM='...' npm run bench:chat-clusters
 *
 * The texts are the validation split exactly as training makes it: training/data.py's build() over
 * training/configs/default.json, written once to training/.cache/chat-clusters/data (M_<domain>_val.jsonl; the
 * build's own training/.cache/default/data is read instead when it exists). Each document is cut into consecutive
 * snippets of 30 to 60 words (lengths seeded), those over 140 tokens are left out, and each round takes PER_DOMAIN
 * unused snippets of every domain, seeded. The server runs with MAX_BATCH_SIZE = one round, MAX_WAIT_MS=200,
 * IDLE_DISPATCH=0 (so the first request does not leave alone) and CLUSTER_IN_FLIGHT=0; a round that did not land in
 * one window is counted under "split rounds". Exits 1 on any HTTP error. docs/chat.md has the result.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { FeatureExtractor } from '../src/adaptation/features.js';
import { ModelPackage } from '../src/model/package.js';
import { clientAgent, startServer, stopServer } from './http.js';

const rounds = Number(process.env.CHAT_CLUSTERS_ROUNDS ?? 20);
const perDomain = Number(process.env.CHAT_CLUSTERS_PER_DOMAIN ?? 8);
const python = process.env.PYTHON ?? '/usr/bin/python3';
const modelDir = 'models/default';
const configPath = 'training/configs/default.json';
const SEED = 1234;
/** The system prompt every chat shares (CHAT_CLUSTERS_SYSTEM). */
const SYSTEM = process.env.CHAT_CLUSTERS_SYSTEM ?? 'You are a helpful assistant. Answer briefly.';
const MODEL = 'chameleon-default';
const WAYS = ['plain', 'chat', 'template', 'plain again'] as const;
type Way = (typeof WAYS)[number];

/** mulberry32: a small seeded generator, so the snippets and their order are the same on every run. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle<T>(xs: T[], next: () => number): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
}

/** The folder holding M_<domain>_val.jsonl: the default build's data, or training/data.py's build() run into the cache. */
function validationData(): string {
  const built = 'training/.cache/default/data';
  if (existsSync(join(built, 'summary.json'))) return built;
  const cached = 'training/.cache/chat-clusters/data';
  if (existsSync(join(cached, 'summary.json'))) return cached;
  const script = 'import json, sys; from pathlib import Path; sys.path.insert(0, "training"); import data; ' +
    `data.build(json.loads(Path(${JSON.stringify(configPath)}).read_text()), Path(${JSON.stringify(cached)}))`;
  const done = spawnSync(python, ['-c', script], { stdio: 'inherit' });
  if (done.status !== 0) throw new Error(`${python} training/data.py build failed (${done.status ?? done.signal})`);
  return cached;
}

/** Every document of a domain's validation split cut into consecutive snippets of 30 to 60 words. */
function snippets(dir: string, domain: string, next: () => number): string[] {
  const out: string[] = [];
  for (const line of readFileSync(join(dir, `M_${domain}_val.jsonl`), 'utf8').split('\n')) {
    if (line.trim() === '') continue;
    const words = (JSON.parse(line) as { text: string }).text.split(/\s+/).filter((w) => w !== '');
    for (let at = 0; at < words.length;) {
      const length = 30 + Math.floor(next() * 31);
      if (at + length > words.length) break;
      out.push(words.slice(at, at + length).join(' '));
      at += length;
    }
  }
  return out;
}

interface Item { domain: number; text: string }
interface Answer { batch: number; cluster: number; clusters: number; batchSize: number; similarity: number; gated: boolean }

function post(base: string, path: string, body: unknown): Promise<Answer> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}${path}`, { method: 'POST', agent: clientAgent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, (res) => {
      res.setEncoding('utf8');
      let text = '';
      res.on('data', (chunk: string) => { text += chunk; });
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`${path}: HTTP ${res.statusCode}: ${text}`));
        const c = (JSON.parse(text) as {
          chameleon: { batch_id: number; cluster_index: number; num_clusters: number; batch_size: number; mode: string; context_similarity: number; gated: boolean };
        }).chameleon;
        if (c.mode !== 'batch') return reject(new Error(`${path}: served in mode ${c.mode}, not batch`));
        resolve({ batch: c.batch_id, cluster: c.cluster_index, clusters: c.num_clusters, batchSize: c.batch_size, similarity: c.context_similarity, gated: c.gated });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

const comb2 = (n: number) => (n * (n - 1)) / 2;

/** Contingency table of two labelings: counts[i][j] = items with label i in `a` and j in `b`. */
function contingency(a: number[], b: number[]): { table: Map<string, number>; rows: Map<number, number>; cols: Map<number, number> } {
  const table = new Map<string, number>();
  const rows = new Map<number, number>();
  const cols = new Map<number, number>();
  a.forEach((x, i) => {
    const y = b[i];
    table.set(`${x},${y}`, (table.get(`${x},${y}`) ?? 0) + 1);
    rows.set(x, (rows.get(x) ?? 0) + 1);
    cols.set(y, (cols.get(y) ?? 0) + 1);
  });
  return { table, rows, cols };
}

/** Adjusted Rand index (Hubert and Arabie); 1 when both labelings are one cluster each. */
function ari(a: number[], b: number[]): number {
  const { table, rows, cols } = contingency(a, b);
  const index = [...table.values()].reduce((s, n) => s + comb2(n), 0);
  const sumA = [...rows.values()].reduce((s, n) => s + comb2(n), 0);
  const sumB = [...cols.values()].reduce((s, n) => s + comb2(n), 0);
  const expected = (sumA * sumB) / comb2(a.length);
  const max = (sumA + sumB) / 2;
  return max === expected ? 1 : (index - expected) / (max - expected);
}

/** Normalised mutual information, arithmetic-mean normalisation (scikit-learn's default). */
function nmi(a: number[], b: number[]): number {
  const n = a.length;
  const { table, rows, cols } = contingency(a, b);
  const entropy = (counts: Map<number, number>) => -[...counts.values()].reduce((s, c) => s + (c / n) * Math.log(c / n), 0);
  let mi = 0;
  for (const [key, c] of table) {
    const [x, y] = key.split(',').map(Number);
    mi += (c / n) * Math.log((c * n) / (rows.get(x)! * cols.get(y)!));
  }
  const h = (entropy(rows) + entropy(cols)) / 2;
  return h === 0 ? 1 : mi / h;
}

/** Requests whose cluster's majority domain is their own. */
function majorityCount(domains: number[], clusters: number[]): number {
  const { table } = contingency(clusters, domains);
  const best = new Map<number, number>();
  for (const [key, c] of table) {
    const cluster = Number(key.split(',')[0]);
    best.set(cluster, Math.max(best.get(cluster) ?? 0, c));
  }
  return [...best.values()].reduce((s, c) => s + c, 0);
}

const pkg = ModelPackage.open(modelDir);
const template = pkg.chatTemplate;
if (template === null) throw new Error(`${modelDir} has no chat template`);
const messages = (text: string) => [{ role: 'system', content: SYSTEM }, { role: 'user', content: text }];
/** The chat prompt as the template renders it, in tokens (no BOS added: the template writes its own). */
const templateIds = (text: string) => pkg.tokenizer.encode(template!.render(messages(text), true));
/** The server's features, computed here to see how alike the ways make the requests look. */
const features = new FeatureExtractor(pkg.readTensor('embeddings'), pkg.dims.vocab_size, pkg.dims.d_model, pkg.manifest.features.exclude_token_ids);
/** The ids a way's adaptation reads: a plain prompt's (its BOS is excluded), the chat's user content, the whole template. */
const adaptationIds = (way: Way, text: string) => (way === 'template' ? templateIds(text) : pkg.tokenizer.encodePrompt(text));
const cosine = (a: Float32Array, b: Float32Array) => a.reduce((s, x, i) => s + x * b[i], 0);

const config = JSON.parse(readFileSync(configPath, 'utf8')) as { adapt_domains: string[] };
const domains = config.adapt_domains;
const dataDir = validationData();
const next = random(SEED);
/** Snippets of more than MAX_SNIPPET_TOKENS (a run of symbols, a URL) are left out. */
const MAX_SNIPPET_TOKENS = 140;
const cut = domains.map((d) => snippets(dataDir, d, next));
const pools = cut.map((all) => shuffle(all.filter((text) => pkg.tokenizer.encode(text).length <= MAX_SNIPPET_TOKENS), next));
for (const [i, pool] of pools.entries()) {
  if (pool.length < rounds * perDomain) throw new Error(`${domains[i]} has ${pool.length} validation snippets, fewer than ${rounds} rounds x ${perDomain}`);
}
/** Round r: PER_DOMAIN snippets of each domain, in a seeded order; the same items are sent every way. */
const roundItems: Item[][] = Array.from({ length: rounds }, (_, r) =>
  shuffle(domains.flatMap((_, d) => pools[d].slice(r * perDomain, (r + 1) * perDomain).map((text) => ({ domain: d, text }))), next));

function body(way: Way, text: string): { path: string; body: Record<string, unknown> } {
  const common = { model: MODEL, max_tokens: 1, temperature: 0, adaptation: 'batch' };
  if (way === 'plain' || way === 'plain again') return { path: '/v1/completions', body: { ...common, prompt: text } };
  if (way === 'chat') return { path: '/v1/chat/completions', body: { ...common, messages: messages(text) } };
  return { path: '/v1/completions', body: { ...common, prompt: templateIds(text) } };
}

const roundSize = domains.length * perDomain;
console.log(`validation snippets (30-60 words) from ${dataDir}: ${pools.map((p, i) => `${domains[i]} ${p.length}`).join(', ')} ` +
  `(${cut.reduce((s, c) => s + c.length, 0) - pools.reduce((s, p) => s + p.length, 0)} over ${MAX_SNIPPET_TOKENS} tokens left out); ` +
  `${rounds} rounds x ${roundSize} requests per way`);
const server = await startServer(modelDir, {
  MODEL_NAME: MODEL, MAX_BATCH_SIZE: String(roundSize), MAX_WAIT_MS: '200', IDLE_DISPATCH: '0', CLUSTER_IN_FLIGHT: '0',
});

interface Stats { windows: Set<number>; splitRounds: number; requests: number; majority: number; chance: number; purity: number[]; clusters: number[]; ari: number[]; nmi: number[]; same: number[]; other: number[]; similarity: number[]; gated: number }
const stats = new Map<Way, Stats>(WAYS.map((w) => [w, { windows: new Set(), splitRounds: 0, requests: 0, majority: 0, chance: 0, purity: [], clusters: [], ari: [], nmi: [], same: [], other: [], similarity: [], gated: 0 }]));
const chanceNext = random(SEED + 1);
/** Mean majority count of the same clusters over 200 shuffles of the domains. */
const chanceMajority = (domainsOf: number[], clusters: number[]) =>
  Array.from({ length: 200 }, () => majorityCount(shuffle([...domainsOf], chanceNext), clusters)).reduce((a, b) => a + b, 0) / 200;
/** Each way's cluster index per item, by round (empty for a split round), for the agreement between the ways. */
const partitions = new Map<Way, number[][]>(WAYS.map((w) => [w, []]));

try {
  for (let r = 0; r < rounds; r++) {
    for (const way of WAYS) {
      const items = roundItems[r];
      const answers = await Promise.all(items.map((item) => {
        const { path, body: b } = body(way, item.text);
        return post(server.base, path, b);
      }));
      const s = stats.get(way)!;
      const byBatch = new Map<number, { domains: number[]; clusters: number[]; count: number }>();
      answers.forEach((a, i) => {
        const group = byBatch.get(a.batch) ?? { domains: [], clusters: [], count: a.clusters };
        group.domains.push(items[i].domain);
        group.clusters.push(a.cluster);
        byBatch.set(a.batch, group);
        s.windows.add(a.batch);
        s.similarity.push(a.similarity);
        if (a.gated) s.gated++;
      });
      if (byBatch.size > 1) s.splitRounds++;
      for (const group of byBatch.values()) {
        s.requests += group.domains.length;
        const majority = majorityCount(group.domains, group.clusters);
        s.majority += majority;
        s.purity.push(majority / group.domains.length);
        s.chance += chanceMajority(group.domains, group.clusters);
        s.clusters.push(group.count);
        s.ari.push(ari(group.domains, group.clusters));
        s.nmi.push(nmi(group.domains, group.clusters));
      }
      const f = items.map((item) => features.feature(adaptationIds(way, item.text)));
      for (let i = 0; i < items.length; i++) {
        for (let j = i + 1; j < items.length; j++) (items[i].domain === items[j].domain ? s.same : s.other).push(cosine(f[i], f[j]));
      }
      partitions.get(way)!.push(byBatch.size === 1 ? answers.map((a) => a.cluster) : []);
    }
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const se = (xs: number[]) => Math.sqrt(xs.reduce((a, x) => a + (x - mean(xs)) ** 2, 0) / (xs.length - 1) / xs.length);
  const rows = WAYS.map((way) => {
    const s = stats.get(way)!;
    return [way, String(s.windows.size), String(s.splitRounds), String(s.requests), mean(s.clusters).toFixed(2),
      `${(s.majority / s.requests).toFixed(3)} ± ${se(s.purity).toFixed(3)}`, (s.chance / s.requests).toFixed(3), mean(s.ari).toFixed(3), mean(s.nmi).toFixed(3),
      mean(s.same).toFixed(3), mean(s.other).toFixed(3), mean(s.similarity).toFixed(3), (s.gated / s.requests).toFixed(3)];
  });
  const head = ['way', 'windows', 'split rounds', 'requests', 'mean clusters', 'purity', 'chance purity', 'ARI', 'NMI', 'cos same domain', 'cos other domain', 'context similarity', 'gated'];
  console.log(`| ${head.join(' | ')} |\n| ${head.map(() => '---').join(' | ')} |`);
  for (const row of rows) console.log(`| ${row.join(' | ')} |`);
  const agreement = (a: Way, b: Way) => {
    const pairs = partitions.get(a)!.map((p, r) => [p, partitions.get(b)![r]]).filter(([p, q]) => p.length > 0 && q.length > 0);
    return pairs.length === 0 ? '-' : mean(pairs.map(([p, q]) => ari(p, q))).toFixed(3);
  };
  console.log(`agreement of the partitions of the same snippets (mean ARI per round): plain-plain again ${agreement('plain', 'plain again')}, ` +
    `plain-chat ${agreement('plain', 'chat')}, plain-template ${agreement('plain', 'template')}, chat-template ${agreement('chat', 'template')}`);
} catch (error) {
  console.error((error as Error).message);
  process.exitCode = 1;
} finally {
  await stopServer(server.child);
  clientAgent.destroy();
}
