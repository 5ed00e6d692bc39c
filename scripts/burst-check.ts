/**
 * Load shedding while the engine runs, measured from outside (`npm run build && npm run burst-check`). The script
 * starts its own servers (`node dist/server.js`, each its own process) and a bare node:http server that answers
 * 429 (and /health/live 200) at once, the floor of this machine, and drives them from this process:
 *
 *  1. bursts: QUEUE_SIZE=16 MAX_BATCH_SIZE=8, eight clients keep the engine decoding; then 240 concurrent requests
 *     from new connections (max_tokens 0 or 32), while a probe polls /health/live. The same against the service with
 *     BURST_YIELD_MS=0 (no claims) and against the bare server, round by round, so that the machine's drift hits
 *     all three alike. Prints the p99 of the 429s and of /health/live and their ratio to the floor's, and checks that
 *     every accepted request is answered once with its own prompt.
 *  2. steady state: 32 clients of mixed lengths (greedy and sampled) without bursts, BURST_YIELD_MS at its default and
 *     0 alternately (or against BASELINE_SERVER, another build's server.js); prints tokens/s and the ratio.
 *  3. refusals that never stop: 48 clients at QUEUE_SIZE=16 MAX_BATCH_SIZE=8, each retrying at once when refused,
 *     BURST_YIELD_MS at its default and 0 alternately: the admitted requests' tokens/s under the claims' worst case.
 *
 * Settings: PHASES (default bursts,steady,storm), BURST_ROUNDS (default 4 after a first, cold one; two bursts each), BUSY_CLIENTS (default 8),
 * STEADY_RUNS (default 3 each), STEADY_SECONDS (default 10), BASELINE_SERVER.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Agent, request as httpRequest } from 'node:http';
import { Random } from '../src/engine/sampling.js';

const MODEL = 'chameleon-default';
const ROUNDS = Number(process.env.BURST_ROUNDS ?? 4);
const STEADY_RUNS = Number(process.env.STEADY_RUNS ?? 3);
const STEADY_SECONDS = Number(process.env.STEADY_SECONDS ?? 10);
const BURST = 240;
const BUSY_CLIENTS = Number(process.env.BUSY_CLIENTS ?? 8);
const BASELINE_SERVER = process.env.BASELINE_SERVER;

interface Reply { status: number; body: string; ms: number }

function send(agent: Agent, base: string, method: string, path: string, body?: string): Promise<Reply> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}${path}`, { method, agent, headers: body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), ms: performance.now() - started }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const BARE_SERVER = `
const server = require('node:http').createServer((req, res) => {
  if (req.url === '/health/live') { res.writeHead(200, { 'content-type': 'application/json' }); return res.end('{"status":"ok"}'); }
  res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '1' });
  res.end('{"error":{"message":"full","type":"rate_limit_error","param":null,"code":"queue_full"}}');
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));`;

interface Server { name: string; base: string; process: ChildProcess }

async function startService(name: string, port: number, env: Record<string, string>, script = 'dist/server.js'): Promise<Server> {
  const base = `http://127.0.0.1:${port}`;
  if (await fetch(`${base}/health/live`).then(() => true, () => false)) throw new Error(`port ${port} is already taken: is an earlier run still there?`);
  const child = spawn(process.execPath, [script], { env: { ...process.env, HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'error', ...env }, stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}`);
    try {
      if ((await fetch(`${base}/health/ready`)).status === 200) return { name, base, process: child };
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${name} was not ready within 60 s`);
}

async function startBare(): Promise<Server> {
  const child = spawn(process.execPath, ['-e', BARE_SERVER], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve) => child.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
  return { name: 'bare node:http', base: `http://127.0.0.1:${port}`, process: child };
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

const random = new Random(11);
const word = () => Array.from({ length: 4 + Math.floor(random.next() * 5) }, () => String.fromCharCode(97 + Math.floor(random.next() * 26))).join('');
const words = (n: number) => Array.from({ length: n }, word).join(' ');

/** Clients that keep the engine busy until stopped: non-streamed, mixed lengths, greedy and sampled. */
function keepBusy(base: string, clients: number, maxTokens: [number, number], counts = { refused: 0 }): { stop: () => Promise<number> } {
  const agent = new Agent({ keepAlive: true, maxSockets: clients });
  let running = true;
  let tokens = 0;
  let failure: unknown = null;
  const loops = Array.from({ length: clients }, async (_, c) => {
    for (let i = 0; running; i++) {
      const body = JSON.stringify({
        model: MODEL, prompt: words(3 + Math.floor(random.next() * 18)), ignore_eos: true,
        max_tokens: maxTokens[0] + Math.floor(random.next() * (maxTokens[1] - maxTokens[0] + 1)),
        ...((c + i) % 2 === 0 ? { temperature: 0 } : { temperature: 0.8, top_p: 0.9 }),
      });
      const res = await send(agent, base, 'POST', '/v1/completions', body);
      if (res.status === 200) tokens += (JSON.parse(res.body) as { usage: { completion_tokens: number } }).usage.completion_tokens;
      else if (res.status === 429) counts.refused++;
      else throw new Error(`a background request answered ${res.status}: ${res.body}`);
    }
  }).map((loop) => loop.catch((error: unknown) => {
    failure ??= error;
    running = false;
  }));
  return {
    stop: async () => {
      running = false;
      await Promise.all(loops);
      agent.destroy();
      if (failure !== null) throw failure;
      return tokens;
    },
  };
}

interface BurstResult { refused: number[]; live: number[]; accepted: number; own: boolean; other: number }

/** 240 concurrent requests over new connections while /health/live is polled on an open one. */
async function burst(server: Server): Promise<BurstResult> {
  const prompts = Array.from({ length: BURST }, (_, i) => `burst ${i} ${word()}`);
  const probeAgent = new Agent({ keepAlive: true, maxSockets: 1 });
  await send(probeAgent, server.base, 'GET', '/health/live');
  const live: number[] = [];
  let bursting = true;
  const probing = (async () => {
    while (bursting) {
      live.push((await send(probeAgent, server.base, 'GET', '/health/live')).ms);
      await new Promise((r) => setTimeout(r, 2));
    }
  })();
  const agent = new Agent({ keepAlive: true, maxSockets: BURST });
  const replies = await Promise.all(prompts.map((prompt, i) => send(agent, server.base, 'POST', '/v1/completions', JSON.stringify({ model: MODEL, prompt, max_tokens: i % 2 === 0 ? 0 : 32, echo: true, temperature: 0 }))));
  bursting = false;
  await probing;
  agent.destroy();
  probeAgent.destroy();
  const accepted = replies.map((r, i) => ({ r, prompt: prompts[i] })).filter(({ r }) => r.status === 200);
  return {
    refused: replies.filter((r) => r.status === 429).map((r) => r.ms),
    live,
    accepted: accepted.length,
    own: accepted.every(({ r, prompt }) => (JSON.parse(r.body) as { choices: Array<{ text: string }> }).choices[0].text.startsWith(prompt)),
    other: replies.filter((r) => r.status !== 200 && r.status !== 429).length,
  };
}

const ms = (v: number) => `${v.toFixed(0).padStart(4)} ms`;

const servers: Server[] = [];
const burstEnv = { QUEUE_SIZE: '16', MAX_BATCH_SIZE: '8' };
const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
const yieldSeconds = async (s: Server) => Number(/^chameleon_engine_yield_seconds_total (\S+)$/m.exec(await (await fetch(`${s.base}/metrics`)).text())?.[1] ?? NaN);

async function bursts(): Promise<void> {
  const claiming = await startService('service', 18451, burstEnv);
  servers.push(claiming);
  const unclaimed = await startService('service, BURST_YIELD_MS=0', 18452, { ...burstEnv, BURST_YIELD_MS: '0' });
  servers.push(unclaimed);
  const bare = await startBare();
  servers.push(bare);
  console.log(`bursts of ${BURST} concurrent requests from new connections (max_tokens 0 or 32) while 8 clients keep the engine decoding; QUEUE_SIZE=16 MAX_BATCH_SIZE=8; a first round, then ${ROUNDS} rounds x 2 bursts, alternating`);
  const results = new Map<Server, BurstResult[]>(servers.map((s) => [s, []]));
  const yieldedBefore = await yieldSeconds(claiming);
  const cold = new Map<Server, BurstResult[]>(servers.map((s) => [s, []]));
  for (let round = 0; round <= ROUNDS; round++) {
    for (const server of [claiming, bare, unclaimed]) {
      const busy = server === bare || BUSY_CLIENTS === 0 ? null : keepBusy(server.base, BUSY_CLIENTS, [16, 64]);
      await new Promise((r) => setTimeout(r, 500));
      for (let wave = 0; wave < 2; wave++) {
        (round === 0 ? cold : results).get(server)!.push(await burst(server));
        await new Promise((r) => setTimeout(r, 300));
      }
      await busy?.stop();
    }
  }
  const summary = (server: Server, of = results) => {
    const all = of.get(server)!;
    const refused = all.flatMap((r) => r.refused);
    const live = all.flatMap((r) => r.live);
    return { refusedP99: percentile(refused, 99), refusedP50: percentile(refused, 50), liveP99: percentile(live, 99), refused: refused.length, probes: live.length, accepted: all.reduce((a, r) => a + r.accepted, 0), own: all.every((r) => r.own), other: all.reduce((a, r) => a + r.other, 0), perBurst: all.map((r) => percentile(r.refused, 99)) };
  };
  const coldFloor = summary(bare, cold);
  console.log(`  first round, each process cold (not in the results below): 429 p99 ${[claiming, unclaimed].map((s) => `${s.name} ${(summary(s, cold).refusedP99 / coldFloor.refusedP99).toFixed(2)}x`).join(', ')} the floor (${coldFloor.refusedP99.toFixed(0)} ms)`);
  const floor = summary(bare);
  for (const server of [claiming, unclaimed, bare]) {
    const s = summary(server);
    const vsFloor = server === bare ? '' : `  = ${(s.refusedP99 / floor.refusedP99).toFixed(2)}x / ${(s.liveP99 / floor.liveP99).toFixed(2)}x the floor`;
    console.log(`  ${server.name.padEnd(28)} 429 p50 ${ms(s.refusedP50)} p99 ${ms(s.refusedP99)} (${s.refused})  /health/live p99 ${ms(s.liveP99)} (${s.probes} probes)${vsFloor}`);
    console.log(`  ${''.padEnd(28)} 429 p99 per burst: ${s.perBurst.map((v) => v.toFixed(0)).join(' ')} ms${server === bare ? '' : `; accepted ${s.accepted}, each answered once with its own prompt: ${s.own}; other statuses ${s.other}`}`);
  }
  console.log(`  the engine waited ${((await yieldSeconds(claiming)) - yieldedBefore).toFixed(2)} s in all for the claims (chameleon_engine_yield_seconds_total)`);
  for (const s of servers.splice(0)) s.process.kill('SIGTERM');
}

async function steadyState(): Promise<void> {
  const steadyOn = await startService('service', 18453, {});
  servers.push(steadyOn);
  const steadyOff = BASELINE_SERVER === undefined
    ? await startService('service, BURST_YIELD_MS=0', 18454, { BURST_YIELD_MS: '0' })
    : await startService('baseline', 18454, {}, BASELINE_SERVER);
  servers.push(steadyOff);
  console.log(`steady state: 32 clients, prompts of 3-20 words, 16-128 new tokens, half sampled, no bursts; ${STEADY_RUNS} runs of ${STEADY_SECONDS} s each, alternating`);
  const rates = new Map<Server, number[]>([[steadyOn, []], [steadyOff, []]]);
  for (let run = 0; run < STEADY_RUNS; run++) {
    for (const server of run % 2 === 0 ? [steadyOn, steadyOff] : [steadyOff, steadyOn]) {
      const busy = keepBusy(server.base, 32, [16, 128]);
      const started = performance.now();
      await new Promise((r) => setTimeout(r, STEADY_SECONDS * 1000));
      const tokens = await busy.stop();
      rates.get(server)!.push(tokens / ((performance.now() - started) / 1000));
    }
  }
  for (const [server, r] of rates) console.log(`  ${server.name.padEnd(28)} ${mean(r).toFixed(0)} tok/s (runs: ${r.map((v) => v.toFixed(0)).join(', ')})`);
  console.log(`  ratio ${(mean(rates.get(steadyOn)!) / mean(rates.get(steadyOff)!)).toFixed(3)}; the engine waited ${(await yieldSeconds(steadyOn)).toFixed(2)} s for claims`);
  for (const s of servers.splice(0)) s.process.kill('SIGTERM');
}

async function refusalsThatNeverStop(): Promise<void> {
  // Refusals that never stop: the claims' worst case for the admitted requests.
  const stormOn = await startService('service', 18455, burstEnv);
  servers.push(stormOn);
  const stormOff = await startService('service, BURST_YIELD_MS=0', 18456, { ...burstEnv, BURST_YIELD_MS: '0' });
  servers.push(stormOff);
  console.log(`refusals that never stop: QUEUE_SIZE=16 MAX_BATCH_SIZE=8, 48 clients (16-64 new tokens) retrying at once when refused; ${STEADY_RUNS} runs of ${STEADY_SECONDS} s each, alternating`);
  const storm = new Map<Server, Array<{ tokens: number; refused: number }>>([[stormOn, []], [stormOff, []]]);
  for (let run = 0; run < STEADY_RUNS; run++) {
    for (const server of run % 2 === 0 ? [stormOn, stormOff] : [stormOff, stormOn]) {
      const counts = { refused: 0 };
      const busy = keepBusy(server.base, 48, [16, 64], counts);
      const started = performance.now();
      await new Promise((r) => setTimeout(r, STEADY_SECONDS * 1000));
      const tokens = await busy.stop();
      const seconds = (performance.now() - started) / 1000;
      storm.get(server)!.push({ tokens: tokens / seconds, refused: counts.refused / seconds });
    }
  }
  for (const [server, r] of storm) console.log(`  ${server.name.padEnd(28)} ${mean(r.map((x) => x.tokens)).toFixed(0)} tok/s, ${mean(r.map((x) => x.refused)).toFixed(0)} refusals/s (runs: ${r.map((x) => x.tokens.toFixed(0)).join(', ')} tok/s)`);
  console.log(`  ratio ${(mean(storm.get(stormOn)!.map((x) => x.tokens)) / mean(storm.get(stormOff)!.map((x) => x.tokens))).toFixed(3)}; the engine waited ${(await yieldSeconds(stormOn)).toFixed(2)} s for claims`);
}

const PHASES: Record<string, () => Promise<void>> = { bursts, steady: steadyState, storm: refusalsThatNeverStop };
try {
  for (const phase of (process.env.PHASES ?? 'bursts,steady,storm').split(',')) await PHASES[phase]();
} finally {
  for (const s of servers) s.process.kill('SIGTERM');
}
