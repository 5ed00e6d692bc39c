/**
 * The TypeScript half of bench/gpu-check.sh (run that, not this): one package on one device, served as users run it
 * (`node dist/server.js` in its own process, this process the client), and the comparison table at the end.
 *
 *   tsx bench/gpu-check.ts run --label default --device cuda --model models/default --out RESULTS.jsonl
 *   tsx bench/gpu-check.ts report RESULTS.jsonl
 *
 * `run` starts the server with DEVICE=<device>, refuses to go on (exit 3) when /health/ready names another execution
 * provider than the one asked for (the service falls back from cuda to cpu with a warning), then drives 1 and then 32
 * streaming clients (greedy, prompts of 4 to 40 words, max_tokens 8 to 128, ignore_eos, each client sending its next
 * request when its last one ends): GPU_CHECK_WARMUP seconds (2) unmeasured, then GPU_CHECK_SECONDS (8) measured;
 * then the requests still streaming are cut and the engine left to settle. It reads the server's /metrics at the
 * measured window's start and end: `chameleon_tokens_generated_total` gives tokens/s,
 * `chameleon_forward_seconds{phase="decode"}` sum over count the mean decoder run per decode step (with the CUDA
 * provider, onnxruntime-node copies every input, the KV cache included, to the device and every output back on each
 * run: this is the per-step host round trip), and `chameleon_forward_rows{phase="decode"}` the rows per step. It
 * appends one JSON line per load to RESULTS.jsonl.
 */
import { execFile } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { type ClientRequest, request as httpRequest } from 'node:http';
import { clientAgent, quantile, startServer, stopServer, WORDS } from './http.js';

interface LoadResult {
  label: string;
  device: string;
  provider: string;
  model: string;
  clients: number;
  seconds: number;
  /** Requests that ended inside the load, and those cut at its end. */
  requests: number;
  cut: number;
  errors: number;
  /** Tokens the server generated during the load (chameleon_tokens_generated_total). */
  tokens: number;
  tokPerS: number;
  ttftP50: number;
  itlP50: number;
  decodeSteps: number;
  decodeStepMs: number;
  rowsPerStep: number;
  prefillRuns: number;
  prefillMs: number;
  /** Share of the load's wall time the engine spent in decoder runs (decode and prefill). */
  busy: number;
  /** Mean GPU utilisation (%) and most GPU memory used (MiB) that nvidia-smi reported during the load (cuda only). */
  gpuUtil: number;
  gpuMemMiB: number;
  startupS: number;
}

const f = (x: number, digits = 0) => (Number.isFinite(x) ? x.toFixed(digits) : '-');
const count = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;

function args(list: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < list.length; i++) {
    if (!list[i].startsWith('--')) throw new Error(`unexpected argument ${list[i]}`);
    out[list[i].slice(2)] = list[++i] ?? '';
  }
  return out;
}

/** The request body of request i: greedy, 4 to 40 words of prompt, 8 to 128 new tokens, every one generated. */
function body(i: number, model: string): Record<string, unknown> {
  const words = 4 + ((i * 53) % 37);
  const prompt = Array.from({ length: words }, (_, j) => WORDS[(i + j * 5) % WORDS.length]).join(' ');
  return { model, prompt, max_tokens: 8 + ((i * 37) % 121), temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } };
}

/** The value of a series in Prometheus text: `name`, with a label set containing `label` when given; 0 when absent. */
function series(text: string, name: string, label?: string): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const close = line.indexOf('}');
    if (label !== undefined && (close < 0 || !line.slice(name.length + 1, close).split(',').includes(label))) continue;
    return Number(line.slice(close < 0 ? name.length : close + 1).trim().split(' ')[0]);
  }
  return 0;
}

interface Counters { at: number; tokens: number; decodeSum: number; decodeCount: number; rowsSum: number; rowsCount: number; prefillSum: number; prefillCount: number; inFlight: number }

async function counters(base: string): Promise<Counters> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const decode = 'phase="decode"';
  const prefill = 'phase="prefill"';
  return {
    at: performance.now(),
    tokens: series(text, 'chameleon_tokens_generated_total'),
    decodeSum: series(text, 'chameleon_forward_seconds_sum', decode),
    decodeCount: series(text, 'chameleon_forward_seconds_count', decode),
    rowsSum: series(text, 'chameleon_forward_rows_sum', decode),
    rowsCount: series(text, 'chameleon_forward_rows_count', decode),
    prefillSum: series(text, 'chameleon_forward_seconds_sum', prefill),
    prefillCount: series(text, 'chameleon_forward_seconds_count', prefill),
    inFlight: series(text, 'vllm:num_requests_running') + series(text, 'vllm:num_requests_waiting'),
  };
}

/**
 * What one streamed request saw: when it was sent, when it ended (NaN while streaming), its time to first token, the
 * gaps between its tokens with the time each ended; `cut` when the load's end cut it.
 */
interface Seen { started: number; ended: number; ttft: number; gaps: Array<[at: number, gap: number]>; cut: boolean }

/**
 * One streamed completion (node:http and a hand-rolled SSE split, as bench/http.ts's `streamed`), listed in `inFlight`
 * until it closes, so that the load can cut it at its deadline instead of waiting for the longest request in flight.
 */
function streamOne(base: string, body: Record<string, unknown>, inFlight: Map<ClientRequest, Seen>): Promise<Seen> {
  const started = performance.now();
  const payload = JSON.stringify(body);
  const seen: Seen = { started, ended: NaN, ttft: NaN, gaps: [], cut: false };
  return new Promise((resolve, reject) => {
    const request = httpRequest(`${base}/v1/completions`, { method: 'POST', agent: clientAgent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, (res) => {
      res.setEncoding('utf8');
      if (res.statusCode !== 200) {
        let text = '';
        res.on('data', (chunk: string) => { text += chunk; });
        res.on('end', () => reject(new Error(`HTTP ${res.statusCode}: ${text}`)));
        return;
      }
      let last = NaN;
      let buffered = '';
      res.on('data', (text: string) => {
        buffered += text;
        let end: number;
        while ((end = buffered.indexOf('\n\n')) >= 0) {
          const event = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
          const chunk = JSON.parse(event.slice(6));
          if (chunk.error) {
            res.destroy();
            reject(new Error(chunk.error.message));
            return;
          }
          if (chunk.choices?.[0]?.text) {
            const now = performance.now();
            if (Number.isNaN(seen.ttft)) seen.ttft = now - started;
            else seen.gaps.push([now, now - last]);
            last = now;
          }
        }
      });
      res.on('end', () => {
        seen.ended = performance.now();
        resolve(seen);
      });
      res.on('error', (error) => (seen.cut ? resolve(seen) : reject(error)));
      res.on('close', () => { if (seen.cut) resolve(seen); });
    });
    inFlight.set(request, seen);
    request.on('close', () => inFlight.delete(request));
    request.on('error', (error) => (seen.cut ? resolve(seen) : reject(error)));
    request.end(payload);
  });
}

/** nvidia-smi every second until stopped: mean utilisation and most memory used of GPU 0. */
function gpuSampler(enabled: boolean): { stop: () => Promise<{ util: number; memMiB: number }> } {
  const util: number[] = [];
  const mem: number[] = [];
  let running = enabled;
  const pending: Array<Promise<void>> = [];
  const sample = () => new Promise<void>((resolve) => {
    execFile('nvidia-smi', ['--query-gpu=utilization.gpu,memory.used', '--format=csv,noheader,nounits', '-i', '0'], { timeout: 5000 }, (error, stdout) => {
      if (error === null) {
        const [u, m] = stdout.trim().split(',').map((s) => Number(s.trim()));
        if (Number.isFinite(u)) util.push(u);
        if (Number.isFinite(m)) mem.push(m);
      }
      resolve();
    });
  });
  const timer = enabled ? setInterval(() => { if (running) pending.push(sample()); }, 1000) : undefined;
  return {
    async stop() {
      running = false;
      if (timer !== undefined) clearInterval(timer);
      await Promise.all(pending);
      return { util: util.length === 0 ? NaN : util.reduce((a, b) => a + b, 0) / util.length, memMiB: mem.length === 0 ? NaN : Math.max(...mem) };
    },
  };
}

interface LoadRun { seen: Seen[]; errors: number; next: number; before: Counters; after: Counters }

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** Set when a signal stops the run: the streams it cuts are not errors. */
let interrupted = false;

/**
 * `clients` streaming clients, each sending its next request as soon as its last one ends: `ramp` seconds unmeasured
 * (the first requests of a new batch shape), then `seconds` between two readings of the server's counters; then the
 * requests still streaming are cut (the server cancels their rows).
 */
async function load(base: string, model: string, clients: number, ramp: number, seconds: number, first: number): Promise<LoadRun> {
  const seen: Seen[] = [];
  const inFlight = new Map<ClientRequest, Seen>();
  let errors = 0;
  let next = first;
  let open = true;
  const workers = Promise.all(Array.from({ length: clients }, async () => {
    while (open) {
      try {
        seen.push(await streamOne(base, body(next++, model), inFlight));
      } catch (error) {
        if (!open || interrupted) break;
        errors++;
        if (errors === 1) console.error(`  first error: ${(error as Error).message}`);
        await sleep(100);
      }
    }
  }));
  await sleep(ramp * 1000);
  const before = await counters(base);
  await sleep(Math.max(0, before.at + seconds * 1000 - performance.now()));
  const after = await counters(base);
  open = false;
  for (const [request, cut] of inFlight) {
    cut.cut = true;
    request.destroy();
  }
  await workers;
  return { seen, errors, next, before, after };
}

/**
 * Waits until the server has no request and its engine has run nothing for 600 ms (a cut prompt's prefill still runs
 * to its end), at most `ms`. False when it was still busy.
 */
async function settle(base: string, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  let last = await counters(base);
  let quietSince = last.at;
  while (performance.now() < end) {
    await sleep(200);
    const now = await counters(base);
    if (now.inFlight > 0 || now.decodeCount !== last.decodeCount || now.prefillCount !== last.prefillCount) quietSince = now.at;
    else if (now.at - quietSince >= 600) return true;
    last = now;
  }
  return false;
}

async function run(opts: Record<string, string>): Promise<number> {
  const { label, device, model: modelDir, out } = opts;
  if (!label || !device || !modelDir || !out) throw new Error('run needs --label, --device, --model and --out');
  const seconds = Number(process.env.GPU_CHECK_SECONDS ?? 8);
  const ramp = Number(process.env.GPU_CHECK_WARMUP ?? 2);
  const env: Record<string, string> = { DEVICE: device, SHUTDOWN_TIMEOUT_MS: '10000' };
  if (opts['max-model-len']) env.MAX_MODEL_LEN = opts['max-model-len'];
  const spawned = performance.now();
  const server = await startServer(modelDir, env);
  const startupS = (performance.now() - spawned) / 1000;
  let stopping: Promise<void> | null = null;
  // SIGTERM (the server drains what is left, up to SHUTDOWN_TIMEOUT_MS), SIGKILL 12 s later
  const stop = () => (stopping ??= (async () => {
    const child = server.child;
    const killer = setTimeout(() => {
      console.error('  the server did not stop within 12 s of SIGTERM: SIGKILL');
      child.kill('SIGKILL');
    }, 12_000);
    await stopServer(child);
    clearTimeout(killer);
  })());
  // bench/gpu-check.sh runs this under `timeout`, whose signal reaches the server too (same process group): cut the
  // streams, give the server 3 s to exit on that signal, then stop it (a second SIGTERM makes it exit at once)
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      interrupted = true;
      clientAgent.destroy();
      const child = server.child;
      const exited = new Promise((resolve) => { if (child.exitCode !== null || child.signalCode !== null) resolve(null); else child.once('exit', resolve); });
      void Promise.race([exited, sleep(3000)]).then(() => stop()).finally(() => process.exit(124));
    });
  }
  try {
    const ready = (await (await fetch(`${server.base}/health/ready`)).json()) as { execution_provider?: string; model?: string };
    const provider = ready.execution_provider ?? 'unknown';
    const model = ((await (await fetch(`${server.base}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0]!.id;
    console.log(`  ${label} on DEVICE=${device}: ready in ${startupS.toFixed(1)} s, /health/ready execution_provider=${provider}, model ${model}`);
    if (provider !== device) {
      console.error(`  FAIL: asked for DEVICE=${device} but the server runs on ${provider} (its warning, if any, is above)`);
      return 3;
    }
    let next = 0;
    for (const clients of [1, 32]) {
      const gpu = gpuSampler(device === 'cuda');
      const done = await load(server.base, model, clients, ramp, seconds, next);
      next = done.next;
      const { util, memMiB } = await gpu.stop();
      const { before, after } = done;
      const inWindow = (t: number) => t >= before.at && t <= after.at;
      const elapsed = (after.at - before.at) / 1000;
      const steps = after.decodeCount - before.decodeCount;
      const prefillRuns = after.prefillCount - before.prefillCount;
      const tokens = after.tokens - before.tokens;
      const result: LoadResult = {
        label, device, provider, model: modelDir, clients, seconds: elapsed,
        requests: done.seen.filter((x) => inWindow(x.ended)).length, cut: done.seen.filter((x) => x.cut).length, errors: done.errors, tokens,
        tokPerS: tokens / elapsed,
        ttftP50: quantile(done.seen.filter((x) => inWindow(x.started) && Number.isFinite(x.ttft)).map((x) => x.ttft), 0.5),
        itlP50: quantile(done.seen.flatMap((x) => x.gaps.filter(([at]) => inWindow(at)).map(([, gap]) => gap)), 0.5),
        decodeSteps: steps,
        decodeStepMs: steps > 0 ? ((after.decodeSum - before.decodeSum) / steps) * 1000 : NaN,
        rowsPerStep: after.rowsCount > before.rowsCount ? (after.rowsSum - before.rowsSum) / (after.rowsCount - before.rowsCount) : NaN,
        prefillRuns,
        prefillMs: prefillRuns > 0 ? ((after.prefillSum - before.prefillSum) / prefillRuns) * 1000 : NaN,
        busy: (after.decodeSum - before.decodeSum + after.prefillSum - before.prefillSum) / elapsed,
        gpuUtil: util,
        gpuMemMiB: memMiB,
        startupS,
      };
      appendFileSync(out, `${JSON.stringify(result)}\n`);
      console.log(`  ${count(clients, 'client').padStart(10)}: ${f(result.tokPerS, 1)} tok/s (${tokens} tokens in ${f(elapsed, 1)} s, ${count(result.requests, 'request')} ended in it), ` +
        `TTFT p50 ${f(result.ttftP50)} ms, ITL p50 ${f(result.itlP50, 1)} ms, decode step ${f(result.decodeStepMs, 2)} ms x ${steps} (${f(result.rowsPerStep, 1)} rows), ` +
        `prefill run ${f(result.prefillMs, 2)} ms x ${prefillRuns}, engine busy ${f(result.busy * 100)} %` +
        (device === 'cuda' ? `, GPU util ${f(util)} %, GPU memory ${f(memMiB)} MiB` : '') + `, errors ${result.errors}`);
      const settleMs = clients === 32 ? 5_000 : 20_000; // after the last load, the stop does the rest
      if (!(await settle(server.base, settleMs))) console.log(`  (the engine was still running cut requests' prefills ${settleMs / 1000} s after the cut)`);
    }
    return 0;
  } finally {
    await stop();
    clientAgent.destroy();
  }
}

function report(file: string): number {
  let lines: LoadResult[] = [];
  try {
    lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as LoadResult);
  } catch {
    // no runs finished
  }
  if (lines.length === 0) {
    console.log('no load finished: nothing to compare');
    return 1;
  }
  const labels = [...new Set(lines.map((l) => l.label))];
  const pick = (label: string, device: string, clients: number) => lines.find((l) => l.label === label && l.device === device && l.clients === clients);
  const header = ['package', 'clients', 'CUDA tok/s', 'CPU tok/s', 'CUDA/CPU', 'CUDA step ms', 'CPU step ms', 'CUDA rows/step', 'CPU rows/step', 'CUDA ms/row', 'CPU ms/row', 'GPU util %'];
  const rows = [header];
  for (const label of labels) {
    for (const clients of [1, 32]) {
      const cuda = pick(label, 'cuda', clients);
      const cpu = pick(label, 'cpu', clients);
      if (cuda === undefined && cpu === undefined) continue;
      rows.push([
        label, String(clients), f(cuda?.tokPerS ?? NaN, 1), f(cpu?.tokPerS ?? NaN, 1),
        cuda && cpu ? `${f(cuda.tokPerS / cpu.tokPerS, 2)}x` : '-',
        f(cuda?.decodeStepMs ?? NaN, 2), f(cpu?.decodeStepMs ?? NaN, 2),
        f(cuda?.rowsPerStep ?? NaN, 1), f(cpu?.rowsPerStep ?? NaN, 1),
        f((cuda?.decodeStepMs ?? NaN) / (cuda?.rowsPerStep ?? NaN), 3), f((cpu?.decodeStepMs ?? NaN) / (cpu?.rowsPerStep ?? NaN), 3),
        f(cuda?.gpuUtil ?? NaN),
      ]);
    }
  }
  const widths = header.map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows) console.log(r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  '));
  console.log('step ms = mean decoder run per decode step (chameleon_forward_seconds{phase="decode"} sum/count over the load);');
  console.log('on CUDA each run copies its inputs (KV cache, LoRA factors) to the GPU and its outputs (logits, new KV) back: the host round trip.');
  const fp16 = labels.filter((l) => l.endsWith('-fp16'));
  for (const label of fp16) {
    const base = label.slice(0, -'-fp16'.length);
    for (const device of ['cuda', 'cpu']) {
      for (const clients of [1, 32]) {
        const half = pick(label, device, clients);
        const full = pick(base, device, clients);
        if (half && full) {
          console.log(`${label} / ${base} on ${device} at ${count(clients, 'client')}: ${f(half.tokPerS / full.tokPerS, 2)}x tok/s, step ${f(half.decodeStepMs, 2)} vs ${f(full.decodeStepMs, 2)} ms`);
        }
      }
    }
  }
  const missing = labels.flatMap((label) => ['cuda', 'cpu'].flatMap((device) => [1, 32]
    .filter((clients) => pick(label, device, clients) === undefined).map((clients) => `${label} on ${device} at ${count(clients, 'client')}`)));
  if (missing.length > 0) console.log(`loads that did not run (see the log above for why): ${missing.join('; ')}`);
  const onCuda = lines.filter((l) => l.device === 'cuda');
  if (onCuda.length === 0) console.log('FAILED: no load ran on CUDA, so this check shows nothing of the CUDA provider');
  const errors = lines.reduce((s, l) => s + l.errors, 0);
  if (errors > 0) console.log(`requests that failed: ${errors} (see the first error of each load above)`);
  return errors > 0 || onCuda.length === 0 ? 1 : 0;
}

const [command, ...rest] = process.argv.slice(2);
if (command === 'run') process.exitCode = await run(args(rest));
else if (command === 'report') process.exitCode = report(rest[0] ?? '');
else {
  console.error('usage: tsx bench/gpu-check.ts run --label L --device cpu|cuda --model DIR [--max-model-len N] --out FILE | report FILE');
  process.exitCode = 2;
}
