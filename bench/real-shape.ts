/**
 * A real-size model served as users run it, beside llama.cpp on the same weights in the same run.
 *
 * A random-weight checkpoint with a real model's shapes (test/fixtures/hf/checkpoints.py; the final norm scaled down
 * so that the softmax is not one-hot) is imported with `model:import` and written as GGUF (test/fixtures/hf/gguf.py),
 * all cached under ~/.cache/chameleon. The service runs as its own process with MAX_MODEL_LEN=512 and is driven over
 * HTTP from this process, streamed and non-streamed; llama.cpp runs in this process through node-llama-cpp, N
 * sequences in one context stepped in lockstep (`controlledEvaluate` of each sequence's prompt or last token, all in
 * one `Promise.all`, which node-llama-cpp batches into one llama_decode; a finished sequence takes the next request at
 * the next step). No HTTP on that side, which favours it. The traffic is the same on
 * both: prompts of 4 to 40 words (about 15 to 150 tokens), 16 to 128 new tokens (ignore_eos), half greedy and half
 * sampled (temperature 0.8, top_p 0.95).
 *
 *   npm run bench:real-shape -- --shape smollm2-135m|gpt2-124m [--dtype float32|float16|int8] [--gguf f32,f16,q8_0]
 *
 *   REAL_SHAPE_SECONDS=20  REAL_SHAPE_CONCURRENCY=1,8,32  MAX_MODEL_LEN=512
 *
 * Each concurrency level runs service streamed, llama.cpp (each GGUF type), service non-streamed, alternating, so
 * that the machine's drift hits both alike. Printed per run: output tokens/s, TTFT and inter-token latency (p50, p99),
 * CPU ms per output token (the server process's user + system time from /proc/<pid>/stat; this process's for
 * llama.cpp), the share of wall time the decoder's runs took (the server's chameleon_forward_seconds), and the
 * service / llama.cpp ratio; then a raw ONNX Runtime decode loop on the same package (no HTTP, no worker, no sampling)
 * at the same batch sizes, its tokens/s and CPU ms per token, for the service's CPU per token beside it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism, homedir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { getLlama, LlamaLogLevel, type LlamaContextSequence, type LlamaModel, type Token } from 'node-llama-cpp';
import { loadConfig } from '../src/config.js';
import { clientAgent, completed, quantile, type Sample, startServer, stopServer, streamed, WORDS } from './http.js';
import { RawLoop } from './raw-loop.js';

const SHAPES = ['smollm2-135m', 'gpt2-124m'];
const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: { shape: { type: 'string' }, dtype: { type: 'string', default: 'float32' }, gguf: { type: 'string', default: 'f32,f16' } },
});
const shape = options.shape ?? positionals[0] ?? 'smollm2-135m';
if (!SHAPES.includes(shape)) throw new Error(`unknown shape ${shape}; one of ${SHAPES.join(', ')}`);
const dtype = options.dtype!;
const ggufTypes = options.gguf!.split(',').filter((t) => t !== '');
const seconds = Number(process.env.REAL_SHAPE_SECONDS ?? 20);
const levels = (process.env.REAL_SHAPE_CONCURRENCY ?? '1,8,32').split(',').map(Number);
const maxModelLen = Number(process.env.MAX_MODEL_LEN ?? 512);
const python = process.env.PYTHON ?? '/usr/bin/python3';
const cache = join(homedir(), '.cache/chameleon');
const checkpoint = join(cache, shape);
const packageDir = join(cache, dtype === 'float32' ? `${shape}-package` : `${shape}-${dtype}-package`);
const cores = availableParallelism();

function run(args: string[]): void {
  const done = spawnSync(python, args, { stdio: 'inherit', env: { ...process.env, OMP_NUM_THREADS: process.env.OMP_NUM_THREADS ?? '2' } });
  if (done.status !== 0) throw new Error(`${python} ${args.join(' ')} failed (${done.status ?? done.signal})`);
}

function memoryKb(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: field('VmRSS'), peak: field('VmHWM') };
}

/** User + system CPU ms of a process, every thread (Linux's clock ticks are 10 ms). */
function processCpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** Seconds the server's decoder runs have taken so far (prefill and decode). */
async function forwardSeconds(base: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  let sum = 0;
  for (const match of text.matchAll(/^chameleon_forward_seconds_sum\{[^}]*\} (\S+)$/gm)) sum += Number(match[1]);
  return sum;
}

interface Request { prompt: string; maxTokens: number; temperature: number; topP: number; seed: number }

function nextRequest(i: number): Request {
  const words = 4 + ((i * 53) % 37);
  const prompt = Array.from({ length: words }, (_, j) => WORDS[(i + j * 5) % WORDS.length]).join(' ');
  const greedy = i % 2 === 0;
  return { prompt, maxTokens: 16 + ((i * 37) % 113), temperature: greedy ? 0 : 0.8, topP: greedy ? 1 : 0.95, seed: i };
}

function body(r: Request, model: string): Record<string, unknown> {
  return {
    model, prompt: r.prompt, max_tokens: r.maxTokens, ignore_eos: true, stream: true, stream_options: { include_usage: true },
    temperature: r.temperature, ...(r.temperature > 0 ? { top_p: r.topP, seed: r.seed } : {}),
  };
}

interface Result { engine: string; clients: number; samples: Sample[]; elapsed: number; errors: number; cpuMs: number; forwardShare: number }

/** `clients` loops, each sending its next request as soon as the last one is answered, until the deadline. */
async function drive(clients: number, one: (r: Request) => Promise<Sample>): Promise<Omit<Result, 'engine' | 'cpuMs' | 'forwardShare'>> {
  const samples: Sample[] = [];
  let errors = 0;
  let next = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  await Promise.all(Array.from({ length: clients }, async () => {
    while (performance.now() < deadline) {
      try {
        samples.push(await one(nextRequest(next++)));
      } catch (error) {
        errors++;
        if (errors === 1) console.error(`first error: ${(error as Error).message}`);
      }
    }
  }));
  return { clients, samples, elapsed: (performance.now() - started) / 1000, errors };
}

async function serviceRun(base: string, pid: number, model: string, clients: number, stream: boolean): Promise<Result> {
  const cpu = processCpuMs(pid);
  const forward = await forwardSeconds(base);
  const result = await drive(clients, (r) => (stream ? streamed(base, body(r, model)) : completed(base, body(r, model))));
  const forwardShare = (await forwardSeconds(base) - forward) / result.elapsed;
  return { ...result, engine: stream ? 'service, streamed' : 'service, non-streamed', cpuMs: processCpuMs(pid) - cpu, forwardShare };
}

/** What the llama.cpp stepper asks of one sequence at a step: the whole prompt, or the last token generated. */
interface Active { request: Request; sample: Sample; started: number; last: number; token?: Token }

/**
 * `clients` sequences of one llama.cpp context stepped together until the deadline: at every step each sequence
 * evaluates either a new request's whole prompt (a free sequence takes the next request at once) or its last token,
 * all in one `Promise.all`, so that node-llama-cpp puts every pending evaluation into the same llama_decode. Sequences
 * driven by separate client loops instead resubmit at different moments and split the batch: on this traffic they gave
 * 36 and 42 tok/s at 8 and 32 sequences where lockstep gave 67 and 66.
 */
async function llamaLockstep(model: LlamaModel, sequences: LlamaContextSequence[], clients: number): Promise<Omit<Result, 'engine' | 'cpuMs' | 'forwardShare'>> {
  const samples: Sample[] = [];
  let next = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const active: Array<Active | undefined> = new Array(clients);
  const options = (r: Request) => ({ generateNext: { token: true, options: r.temperature > 0 ? { temperature: r.temperature, topP: r.topP, seed: r.seed } : { temperature: 0 } } });
  for (;;) {
    const now = performance.now();
    const steps: Array<Promise<void>> = [];
    for (let i = 0; i < clients; i++) {
      let slot = active[i];
      if (slot === undefined) {
        if (now >= deadline) continue;
        const request = nextRequest(next++);
        slot = active[i] = { request, sample: { ttft: NaN, gaps: [], e2e: 0, tokens: 0, promptTokens: 0, window: NaN, cluster: NaN }, started: now, last: now };
        await sequences[i]!.clearHistory();
      }
      const entry = slot;
      const generate = options(entry.request);
      const items = entry.token === undefined
        ? (() => { const ids = model.tokenize(entry.request.prompt); entry.sample.promptTokens = ids.length; return [...ids.slice(0, -1), [ids.at(-1)!, generate] as const]; })()
        : [[entry.token, generate] as const];
      steps.push(sequences[i]!.controlledEvaluate(items as Parameters<LlamaContextSequence['controlledEvaluate']>[0]).then((outputs) => {
        const token = outputs.at(-1)?.next?.token;
        if (token === undefined || token === null) throw new Error('llama.cpp generated no token');
        const done = performance.now();
        if (entry.token === undefined) entry.sample.ttft = done - entry.started;
        else entry.sample.gaps.push(done - entry.last);
        entry.last = done;
        entry.token = token as Token;
        entry.sample.tokens++;
        if (entry.sample.tokens >= entry.request.maxTokens) {
          entry.sample.e2e = done - entry.started;
          samples.push(entry.sample);
          active[i] = undefined;
        }
      }));
    }
    if (steps.length === 0) break;
    await Promise.all(steps);
  }
  return { clients, samples, elapsed: (performance.now() - started) / 1000, errors: 0 };
}

if (!existsSync(join(checkpoint, 'config.json'))) run(['test/fixtures/hf/checkpoints.py', '--shape', shape]);
if (!existsSync(join(packageDir, 'manifest.json'))) run(['training/hf_import.py', checkpoint, packageDir, '--dtype', dtype]);
const ggufFiles = ggufTypes.map((type) => {
  const file = join(cache, `${shape}-${type}.gguf`);
  if (!existsSync(file)) run(['test/fixtures/hf/gguf.py', checkpoint, file, '--type', type]);
  return { type, file };
});

const f = (x: number, digits = 0) => (Number.isFinite(x) ? x.toFixed(digits) : '-');
const spawned = performance.now();
const server = await startServer(packageDir, { MAX_MODEL_LEN: String(maxModelLen), LOG_LEVEL: 'error' });
const pid = server.child.pid!;
const startup = (performance.now() - spawned) / 1000;
const model = ((await (await fetch(`${server.base}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0]!.id;
console.log(`${shape}: random weights, service ${dtype} at MAX_MODEL_LEN=${maxModelLen}, start-up ${startup.toFixed(1)} s, ` +
  `resident memory once ready ${(memoryKb(pid).rss / 1024).toFixed(0)} MiB; llama.cpp (node-llama-cpp, CPU build, ${cores} threads) ` +
  `${ggufTypes.join(', ')}; ${seconds} s per run; ${cores} cores`);

const llama = await getLlama({ gpu: false, build: 'never', maxThreads: cores, logLevel: LlamaLogLevel.error });
// One llama.cpp model and context at a time, made for the run and disposed after it: with the contexts of two GGUF
// files alive in one process, the second one's evaluations never returned.
async function llamaRun(file: { type: string; file: string }, clients: number): Promise<Result> {
  const weights = await llama.loadModel({ modelPath: file.file });
  const context = await weights.createContext({ sequences: clients, contextSize: clients * maxModelLen, threads: cores, flashAttention: false });
  try {
    const sequences = Array.from({ length: clients }, () => context.getSequence());
    const cpu = process.cpuUsage();
    const result = await llamaLockstep(weights, sequences, clients);
    const used = process.cpuUsage(cpu);
    return { ...result, engine: `llama.cpp ${file.type}`, cpuMs: (used.user + used.system) / 1000, forwardShare: NaN };
  } finally {
    await context.dispose();
    await weights.dispose();
  }
}

const tokensOf = (r: Result) => r.samples.reduce((s, x) => s + x.tokens, 0);
const rate = (r: Result) => tokensOf(r) / r.elapsed;
function line(r: Result, against?: Result): string {
  const ttft = r.samples.map((s) => s.ttft).filter(Number.isFinite);
  const gaps = r.samples.flatMap((s) => s.gaps);
  const prompt = r.samples.reduce((s, x) => s + x.promptTokens, 0) / Math.max(1, r.samples.length);
  return `  ${r.engine.padEnd(22)} ${f(rate(r), 1).padStart(6)} tok/s  TTFT p50 ${f(quantile(ttft, 0.5)).padStart(5)} p99 ${f(quantile(ttft, 0.99)).padStart(5)} ms  ` +
    `ITL p50 ${f(quantile(gaps, 0.5), 1).padStart(5)} p99 ${f(quantile(gaps, 0.99), 1).padStart(5)} ms  CPU ${f(r.cpuMs / tokensOf(r), 2).padStart(5)} ms/token  ` +
    `decoder ${f(100 * r.forwardShare).padStart(3)} %  ${r.samples.length} requests (prompt ${f(prompt)} tokens)  errors ${r.errors}` +
    (against ? `  ratio ${f(rate(r) / rate(against), 2)}x ${against.engine}` : '');
}

const results: Result[] = [];
try {
  await drive(4, (r) => streamed(server.base, body(r, model))); // warm-up, not reported
  for (const file of ggufFiles) await llamaRun(file, 4);
  for (const clients of levels) {
    console.log(`${clients} client${clients === 1 ? '' : 's'}:`);
    const first = await serviceRun(server.base, pid, model, clients, true);
    console.log(line(first));
    const theirs: Result[] = [];
    for (const file of ggufFiles) {
      theirs.push(await llamaRun(file, clients));
      console.log(line(theirs.at(-1)!));
    }
    const second = await serviceRun(server.base, pid, model, clients, false);
    console.log(line(second));
    for (const ours of [first, second]) for (const peer of theirs) console.log(`  ${ours.engine} / ${peer.engine}: ${f(rate(ours) / rate(peer), 2)}x`);
    results.push(first, ...theirs, second);
  }
  console.log(`peak resident memory of the server ${(memoryKb(pid).peak / 1024).toFixed(0)} MiB`);
} finally {
  await stopServer(server.child);
  clientAgent.destroy();
  await llama.dispose();
}

// The ceiling of our own engine on the same package: decode steps at the batch each level ran, 150 cached positions
// (about the traffic's mean context), plus prefill runs of PREFILL_CHUNK_TOKENS for the traffic's prompt tokens, so
// that the CPU per output token compares the same work.
const config = loadConfig();
const raw = await RawLoop.open(packageDir, { threads: config.threads, spinning: config.ortSpinning }, Math.max(...levels), maxModelLen);
const chunk = await raw.prefill(1, config.prefillChunkTokens);
console.log(`raw ONNX Runtime loop (same package; no HTTP, worker or sampling): prefill ${f(chunk.cpuMs / config.prefillChunkTokens, 2)} CPU ms per prompt token; ` +
  'decode steps with 150 cached positions:');
for (const clients of levels) {
  const step = await raw.decodeStep(clients, 150);
  const ours = results.find((r) => r.clients === clients && r.engine === 'service, non-streamed')!;
  const promptPerOutput = ours.samples.reduce((s, x) => s + x.promptTokens, 0) / tokensOf(ours);
  const rawCpu = step.cpuMs / clients + promptPerOutput * (chunk.cpuMs / config.prefillChunkTokens);
  const cpuPerToken = ours.cpuMs / tokensOf(ours);
  console.log(`  batch ${String(clients).padStart(2)}: decode ${f((clients * 1000) / step.ms, 1)} tok/s, ${f(step.cpuMs / clients, 2)} CPU ms/token; ` +
    `with this traffic's ${f(promptPerOutput, 2)} prompt tokens per output token ${f(rawCpu, 2)} ms/token. ` +
    `Service non-streamed at ${clients}: ${f(cpuPerToken, 2)} ms/token (${f(cpuPerToken / rawCpu, 2)}x raw)`);
}
await raw.close();
