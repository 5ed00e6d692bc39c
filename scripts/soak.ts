/**
 * Soak (`npm run soak`): starts the built server (dist/server.js) as its own process, keeps it saturated with
 * varied requests (short and long prompts, JSON and streams, logprobs, every adaptation mode, a few clients that
 * hang up mid-stream) for SOAK_SECONDS (default 600), and prints the server's resident memory growth from the
 * end of minute 1 to the end and the latency of the last minute against the first.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Random } from '../src/engine/sampling.js';

const SECONDS = Number(process.env.SOAK_SECONDS ?? 600);
const CLIENTS = Number(process.env.SOAK_CLIENTS ?? 32);
const PORT = Number(process.env.SOAK_PORT ?? 18080);
const BASE = `http://127.0.0.1:${PORT}`;
const MODEL = 'chameleon-default';

const server = spawn(process.execPath, ['dist/server.js'], {
  env: { ...process.env, HOST: '127.0.0.1', PORT: String(PORT), LOG_LEVEL: 'error' },
  stdio: ['ignore', 'inherit', 'inherit'],
});
const serverExit = new Promise<number | null>((resolve) => server.once('exit', resolve));

function rssBytes(): number {
  const status = readFileSync(`/proc/${server.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

/** A seeded uniform [0, 1) source (the engine's own generator). */
function seeded(seed: number): () => number {
  const rng = new Random(seed);
  return () => rng.next();
}

const random = seeded(11);
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
const WORDS = ['whale', 'ship', 'sea', 'captain', 'license', 'permission', 'granted', 'nation', 'congress', 'email', 'meeting', 'café', '日本', '🙂', 'naïve', 'the', 'of', 'and'];
const prompt = () => Array.from({ length: 1 + Math.floor(random() * 60) }, () => pick(WORDS)).join(' ');

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

async function waitReady(): Promise<void> {
  for (let i = 0; i < 600; i++) {
    try {
      if ((await fetch(`${BASE}/health/ready`)).status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the server did not become ready');
}

interface Sample { at: number; ms: number; status: number }

async function client(until: number, samples: Sample[]): Promise<void> {
  while (performance.now() < until) {
    const stream = random() < 0.4;
    const hangUp = stream && random() < 0.05;
    const body = {
      model: MODEL,
      prompt: random() < 0.1 ? [prompt(), prompt()] : prompt(),
      max_tokens: 4 + Math.floor(random() * 40),
      temperature: pick([0, 0.7, 1]),
      stream,
      logprobs: random() < 0.2 ? 2 : undefined,
      echo: random() < 0.1,
      adaptation: pick(['batch', 'batch', 'request', 'static', 'none']),
      stop: random() < 0.2 ? ['.'] : undefined,
    };
    const controller = new AbortController();
    const started = performance.now();
    try {
      const res = await fetch(`${BASE}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: controller.signal });
      if (hangUp) {
        controller.abort();
        continue;
      }
      await res.text();
      samples.push({ at: started, ms: performance.now() - started, status: res.status });
    } catch (error) {
      if (!hangUp) samples.push({ at: started, ms: performance.now() - started, status: 0 });
      void error;
    }
  }
}

try {
  await waitReady();
  const start = performance.now();
  const until = start + SECONDS * 1000;
  const samples: Sample[] = [];
  const rss: Array<{ at: number; bytes: number }> = [];
  const sampler = setInterval(() => rss.push({ at: performance.now() - start, bytes: rssBytes() }), 5000);
  console.log(`soak: ${SECONDS} s, ${CLIENTS} clients, server pid ${server.pid}`);
  await Promise.all(Array.from({ length: CLIENTS }, () => client(until, samples)));
  clearInterval(sampler);
  const minute = Math.min(60_000, (SECONDS * 1000) / 4);
  const first = samples.filter((s) => s.at - start < minute && s.status === 200).map((s) => s.ms);
  const last = samples.filter((s) => s.at - start >= SECONDS * 1000 - minute && s.status === 200).map((s) => s.ms);
  const rssAtMinute = rss.find((r) => r.at >= minute)?.bytes ?? rss[0]!.bytes;
  const rssEnd = rss.at(-1)!.bytes;
  const statuses: Record<string, number> = {};
  for (const s of samples) statuses[s.status] = (statuses[s.status] ?? 0) + 1;
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  console.log(`requests: ${samples.length} answered (${JSON.stringify(statuses)}), plus clients that hung up mid-stream`);
  console.log(`resident memory: ${mib(rssAtMinute)} at ${(minute / 1000).toFixed(0)} s -> ${mib(rssEnd)} at the end: ${(((rssEnd - rssAtMinute) / rssAtMinute) * 100).toFixed(1)}% growth (goal < 5%); max ${mib(Math.max(...rss.map((r) => r.bytes)))}`);
  const ratio = percentile(last, 50) / percentile(first, 50);
  console.log(`latency first ${(minute / 1000).toFixed(0)} s: p50 ${percentile(first, 50).toFixed(0)} ms p95 ${percentile(first, 95).toFixed(0)} ms (${first.length}); last: p50 ${percentile(last, 50).toFixed(0)} ms p95 ${percentile(last, 95).toFixed(0)} ms (${last.length}); p50 ratio ${ratio.toFixed(2)} (goal <= 1.2)`);
} finally {
  server.kill('SIGTERM');
  console.log(`server exit code after SIGTERM: ${await serverExit}`);
}
