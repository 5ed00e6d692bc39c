/**
 * What a rewrite of a package's decoder (npm run model:quantize, model:import --dtype) costs in quality, measured
 * through the service's HTTP API: the perplexity of held-out texts, scored the way evaluation harnesses score
 * through an OpenAI-style API (echo, max_tokens 0, logprobs 0: the prompt's token log-probabilities).
 *
 *   npm run bench:quality -- PKG_A PKG_B [PKG_C ...] [--split test] [--modes none,static] [--max-texts N] [--window N] [--texts FILE.jsonl]
 *   npm run bench:quality -- models/default models/default-int8 models/default-float16
 *
 * PKG_A is the reference (float32); every package is served by its own server process (bench/http.ts's startServer,
 * MAX_MODEL_LEN = the window) in turn, with the same requests in the same order, 32 in flight. The texts: with
 * --texts, a JSONL of {"text", "domain"}; otherwise the held-out split (--split: val, test (default) or test2, which
 * only M has) of PKG_A's training data, built as training does it (training/data.py's build() over the manifest's
 * training.config, cached in training/.cache/quality/<name>-data). Each document is tokenised with PKG_A's tokenizer
 * (every package must have the same tokenizer.json) and cut as training/common.py's chunk_texts cuts it: BOS + up to
 * window - 1 tokens per text (without a BOS, the first token leads and is not scored), tails under 16 tokens dropped;
 * of a domain with more than --max-texts texts (default 40: about 10,000 tokens), that many evenly spaced ones.
 * The ids are sent as the prompt, so no package re-tokenises.
 *
 * Printed: per adaptation mode (--modes, default none and static, or none alone for a base-only package) and per
 * domain, the token-weighted perplexity of each package, its relative change against PKG_A, and the mean |Δ log p| per
 * scored token; then each package's decoder size and scoring time (a side note: this measures quality, not speed,
 * and the machine drifts). Exits 1 on any HTTP error.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { ModelPackage } from '../src/model/package.js';
import { postCompletion, startServer, stopServer } from './http.js';

const python = process.env.PYTHON ?? '/usr/bin/python3';
const MODEL = 'chameleon-quality';
const IN_FLIGHT = 32;
const MIN_TOKENS = 16;

interface Options { packages: string[]; split: string; modes: string[] | null; maxTexts: number; window: number | null; texts: string | null }

function parseArgs(argv: string[]): Options {
  const options: Options = { packages: [], split: 'test', modes: null, maxTexts: 40, window: null, texts: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    };
    if (arg === '--split') options.split = value();
    else if (arg === '--modes') options.modes = value().split(',');
    else if (arg === '--max-texts') options.maxTexts = Number(value());
    else if (arg === '--window') options.window = Number(value());
    else if (arg === '--texts') options.texts = value();
    else if (arg.startsWith('--')) throw new Error(`unknown option ${arg}`);
    else options.packages.push(arg);
  }
  if (options.packages.length < 2) throw new Error('usage: npm run bench:quality -- PKG_A PKG_B [PKG_C ...] [--split test] [--modes none,static] [--max-texts N] [--window N] [--texts FILE.jsonl]');
  if (!['val', 'test', 'test2'].includes(options.split)) throw new Error(`--split ${options.split}: one of val, test, test2`);
  return options;
}

interface Doc { domain: string; text: string }

/** The held-out documents of the reference package's training data, per domain (P's and M's), built once into the cache. */
function trainingDocuments(pkg: ModelPackage, split: string): Doc[] {
  const config = (pkg.manifest as unknown as { training?: { config?: Record<string, unknown> } }).training?.config;
  if (config === undefined) throw new Error(`${pkg.dir} has no training.config in its manifest (not a trained package): pass --texts FILE.jsonl`);
  const dir = join('training/.cache/quality', `${pkg.manifest.name}-data`);
  if (!existsSync(join(dir, 'summary.json'))) {
    const script = 'import json, sys; from pathlib import Path; sys.path.insert(0, "training"); import data; ' +
      `data.build(json.loads(sys.stdin.read()), Path(${JSON.stringify(dir)}))`;
    const done = spawnSync(python, ['-c', script], { input: JSON.stringify(config), stdio: ['pipe', 'inherit', 'inherit'] });
    if (done.status !== 0) throw new Error(`${python} training/data.py build failed (${done.status ?? done.signal})`);
  }
  const docs: Doc[] = [];
  const roles: Array<[string, string[]]> = [['P', config.pretrain_domains as string[]], ['M', config.adapt_domains as string[]]];
  for (const [role, domains] of roles) {
    for (const domain of domains) {
      const file = join(dir, `${role}_${domain}_${split}.jsonl`);
      if (!existsSync(file)) continue; // P has no test2
      for (const line of readFileSync(file, 'utf8').split('\n')) if (line.trim() !== '') docs.push({ domain, text: (JSON.parse(line) as Doc).text });
    }
  }
  return docs;
}

function fileDocuments(path: string): Doc[] {
  return readFileSync(path, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => {
    const row = JSON.parse(l) as { text: string; domain?: string };
    return { domain: row.domain ?? 'all', text: row.text };
  });
}

interface Text { domain: string; ids: number[] }

/**
 * training/common.py's chunk_texts: [BOS] + up to window - 1 tokens per text (no BOS: window tokens, the first leading);
 * then, of a domain with more than maxTexts texts, maxTexts evenly spaced ones (so that every part of the split counts).
 */
function chunk(pkg: ModelPackage, docs: Doc[], window: number, maxTexts: number): Text[] {
  const tok = pkg.tokenizer;
  const lead = tok.addBos && tok.bosId !== null ? [tok.bosId] : [];
  const step = window - lead.length;
  const byDomain = new Map<string, Text[]>();
  for (const doc of docs) {
    const ids = tok.encode(doc.text);
    const texts = byDomain.get(doc.domain) ?? [];
    byDomain.set(doc.domain, texts);
    for (let start = 0; start < ids.length; start += step) {
      const piece = ids.slice(start, start + step);
      if (piece.length - (1 - lead.length) >= MIN_TOKENS) texts.push({ domain: doc.domain, ids: [...lead, ...piece] });
    }
  }
  return [...byDomain.values()].flatMap((texts) => (texts.length <= maxTexts ? texts
    : Array.from({ length: maxTexts }, (_, i) => texts[Math.floor((i * texts.length) / maxTexts)]!)));
}

async function post(base: string, body: unknown): Promise<Array<number | null>> {
  const answer = (await postCompletion(base, body)) as { choices: Array<{ logprobs: { token_logprobs: Array<number | null> } }> };
  return answer.choices[0]!.logprobs.token_logprobs;
}

/** Every text's scored log-probabilities (the first id, BOS or leading token, has none), IN_FLIGHT requests at a time. */
async function score(base: string, texts: Text[], mode: string): Promise<Float64Array[]> {
  const out: Float64Array[] = new Array(texts.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < texts.length; i = next++) {
      const lps = await post(base, { model: MODEL, prompt: [texts[i]!.ids], max_tokens: 0, echo: true, logprobs: 0, adaptation: mode });
      if (lps.length !== texts[i]!.ids.length || lps[0] !== null) throw new Error(`text ${i}: ${lps.length} logprobs for ${texts[i]!.ids.length} ids`);
      out[i] = Float64Array.from(lps.slice(1) as number[]);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  return out;
}

function decoderBytes(dir: string): number {
  const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { files: Record<string, string> };
  return ['decoder', 'decoder_data'].map((k) => m.files[k]).filter((f): f is string => f !== undefined).reduce((sum, f) => sum + statSync(join(dir, f)).size, 0);
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  const dirs = options.packages.map((p) => resolve(p));
  const pkgs = dirs.map((d) => ModelPackage.open(d));
  const reference = pkgs[0]!;
  const tokenizerOf = (p: ModelPackage) => readFileSync(p.paths.tokenizer, 'utf8');
  for (const p of pkgs.slice(1)) if (tokenizerOf(p) !== tokenizerOf(reference)) throw new Error(`${p.dir}'s tokenizer.json differs from ${reference.dir}'s: the same ids would not mean the same text`);
  const window = Math.min(options.window ?? 256, reference.dims.context, ...pkgs.map((p) => p.dims.context));
  const docs = options.texts === null ? trainingDocuments(reference, options.split) : fileDocuments(options.texts);
  const texts = chunk(reference, docs, window, options.maxTexts);
  const baseOnly = pkgs.some((p) => p.adaptive === null);
  const modes = options.modes ?? (baseOnly ? ['none'] : ['none', 'static']);
  const domains = [...new Set(texts.map((t) => t.domain))];
  const scored = texts.reduce((n, t) => n + t.ids.length - 1, 0);
  const dtypeOf = (p: ModelPackage) => (p.manifest.architecture?.dtype ?? 'float32');
  console.log(`quality: echo perplexity through POST /v1/completions (echo, max_tokens 0, logprobs 0), ${options.texts ?? `split ${options.split}`}, ` +
    `${window}-token windows, ${texts.length} texts, ${scored} tokens scored per mode; modes ${modes.join(', ')}`);

  // results[package][mode][text] = the text's scored log-probabilities
  const results: Float64Array[][][] = [];
  const timing: Array<{ start: number; seconds: number }> = [];
  for (const dir of dirs) {
    const started = performance.now();
    const { base, child } = await startServer(dir, { MODEL_NAME: MODEL, MAX_MODEL_LEN: String(window), LOG_LEVEL: 'error' });
    const ready = (performance.now() - started) / 1000;
    try {
      const t0 = performance.now();
      const perMode: Float64Array[][] = [];
      for (const mode of modes) perMode.push(await score(base, texts, mode));
      results.push(perMode);
      timing.push({ start: ready, seconds: (performance.now() - t0) / 1000 });
    } finally {
      await stopServer(child);
    }
  }

  const names = pkgs.map((p, i) => `${basename(dirs[i]!)} (${dtypeOf(p)})`);
  const width = Math.max(14, ...names.map((n) => n.length + 2));
  const header = ['mode', 'domain', 'tokens', ...names.map((n, i) => (i === 0 ? n : `${n} Δ%`)), ...names.slice(1).map((n) => `|Δlog p| ${n.split(' ')[0]}`)];
  const rows: string[][] = [];
  modes.forEach((mode, m) => {
    for (const domain of [...domains, 'overall']) {
      const ids = texts.map((t, i) => (domain === 'overall' || t.domain === domain ? i : -1)).filter((i) => i >= 0);
      const n = ids.reduce((sum, i) => sum + results[0]![m]![i]!.length, 0);
      const ppl = results.map((r) => Math.exp(-ids.reduce((sum, i) => sum + r[m]![i]!.reduce((a, b) => a + b, 0), 0) / n));
      const drift = results.slice(1).map((r) => ids.reduce((sum, i) => sum + r[m]![i]!.reduce((a, lp, j) => a + Math.abs(lp - results[0]![m]![i]![j]!), 0), 0) / n);
      rows.push([mode, domain, String(n), ...ppl.map((p, i) => (i === 0 ? p.toFixed(3) : `${p.toFixed(3)} ${((p / ppl[0]! - 1) * 100 >= 0 ? '+' : '')}${((p / ppl[0]! - 1) * 100).toFixed(2)}`)), ...drift.map((d) => d.toFixed(4))]);
    }
  });
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  const line = (cells: string[]) => cells.map((cell, c) => (c < 2 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ');
  console.log(line(header));
  for (const row of rows) console.log(line(row));
  console.log('');
  console.log(`${'package'.padEnd(width)}  ${'decoder MB'.padStart(10)}  ${'ready s'.padStart(7)}  ${'scoring s'.padStart(9)}  ${'tok/s'.padStart(7)}`);
  pkgs.forEach((_, i) => {
    const { start, seconds } = timing[i]!;
    console.log(`${names[i]!.padEnd(width)}  ${(decoderBytes(dirs[i]!) / 1e6).toFixed(1).padStart(10)}  ${start.toFixed(1).padStart(7)}  ${seconds.toFixed(1).padStart(9)}  ${((scored * modes.length) / seconds).toFixed(0).padStart(7)}`);
  });
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
