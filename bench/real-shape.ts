/**
 * A real-size model served as users run it. A random-weight checkpoint with a real model's shapes (written by
 * test/fixtures/hf/checkpoints.py, cached under ~/.cache/chameleon) is imported with `model:import` (also cached),
 * served by its own process with MAX_MODEL_LEN=512, and driven from this process by 1 and then 32 streaming
 * clients: prompts of 4 to 40 words (about 15 to 150 tokens), 16 to 128 new tokens, half greedy and half sampled (temperature 0.8, top_p
 * 0.95), ignore_eos.
 *
 *   npm run bench:real-shape -- smollm2-135m|gpt2-124m        (REAL_SHAPE_SECONDS=30, MAX_MODEL_LEN=512)
 *
 * Prints the start-up time (process spawned to /health/ready answering 200), the server's resident memory once
 * ready and its peak, and per client count the output tokens/s, TTFT and inter-token latency.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { clientAgent, quantile, type Sample, startServer, stopServer, streamed, WORDS } from './http.js';

const SHAPES = ['smollm2-135m', 'gpt2-124m'];
const shape = process.argv[2] ?? 'smollm2-135m';
if (!SHAPES.includes(shape)) throw new Error(`unknown shape ${shape}; one of ${SHAPES.join(', ')}`);
const seconds = Number(process.env.REAL_SHAPE_SECONDS ?? 30);
const maxModelLen = process.env.MAX_MODEL_LEN ?? '512';
const python = process.env.PYTHON ?? '/usr/bin/python3';
const cache = join(homedir(), '.cache/chameleon');
const checkpoint = join(cache, shape);
const packageDir = join(cache, `${shape}-package`);

function run(args: string[]): void {
  const done = spawnSync(python, args, { stdio: 'inherit', env: { ...process.env, OMP_NUM_THREADS: process.env.OMP_NUM_THREADS ?? '2' } });
  if (done.status !== 0) throw new Error(`${python} ${args.join(' ')} failed (${done.status ?? done.signal})`);
}

function memoryKb(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: field('VmRSS'), peak: field('VmHWM') };
}

function body(i: number, model: string): Record<string, unknown> {
  const words = 4 + ((i * 53) % 37);
  const prompt = Array.from({ length: words }, (_, j) => WORDS[(i + j * 5) % WORDS.length]).join(' ');
  const sampling = i % 2 === 0 ? { temperature: 0 } : { temperature: 0.8, top_p: 0.95, seed: i };
  return { model, prompt, max_tokens: 16 + ((i * 37) % 113), stream: true, stream_options: { include_usage: true }, ignore_eos: true, ...sampling };
}

async function load(base: string, model: string, clients: number): Promise<{ samples: Sample[]; elapsed: number; errors: number }> {
  const samples: Sample[] = [];
  let errors = 0;
  let next = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  await Promise.all(Array.from({ length: clients }, async () => {
    while (performance.now() < deadline) {
      try {
        samples.push(await streamed(base, body(next++, model)));
      } catch (error) {
        errors++;
        if (errors === 1) console.error(`first error: ${(error as Error).message}`);
      }
    }
  }));
  return { samples, elapsed: (performance.now() - started) / 1000, errors };
}

if (!existsSync(join(checkpoint, 'config.json'))) run(['test/fixtures/hf/checkpoints.py', '--shape', shape]);
if (!existsSync(join(packageDir, 'manifest.json'))) run(['training/hf_import.py', checkpoint, packageDir]);
const spawned = performance.now();
const server = await startServer(packageDir, { MAX_MODEL_LEN: maxModelLen });
const startup = (performance.now() - spawned) / 1000;
const ready = memoryKb(server.child.pid!);
const model = ((await (await fetch(`${server.base}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0]!.id;
const f = (x: number, digits = 0) => (Number.isFinite(x) ? x.toFixed(digits) : '-');
console.log(`${shape}: random weights, float32, MAX_MODEL_LEN=${maxModelLen}; start-up ${startup.toFixed(1)} s; ` +
  `resident memory once ready ${(ready.rss / 1024).toFixed(0)} MiB`);
try {
  await load(server.base, model, 4); // warm-up, not reported
  for (const clients of [1, 32]) {
    const { samples, elapsed, errors } = await load(server.base, model, clients);
    const tokens = samples.reduce((s, x) => s + x.tokens, 0);
    const ttft = samples.map((s) => s.ttft);
    const gaps = samples.flatMap((s) => s.gaps);
    console.log(`${String(clients).padStart(2)} clients: ${samples.length} requests in ${elapsed.toFixed(0)} s, ${f(tokens / elapsed, 1)} output tok/s, ` +
      `TTFT p50 ${f(quantile(ttft, 0.5))} ms p99 ${f(quantile(ttft, 0.99))} ms, ITL p50 ${f(quantile(gaps, 0.5), 1)} ms p99 ${f(quantile(gaps, 0.99), 1)} ms, errors ${errors}`);
  }
  console.log(`peak resident memory ${(memoryKb(server.child.pid!).peak / 1024).toFixed(0)} MiB`);
} finally {
  await stopServer(server.child);
  clientAgent.destroy();
}
