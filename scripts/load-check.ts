/**
 * Checks the server's behaviour under hostile load, from outside its process (npm start, then
 * `npm run load-check [-- http://host:port]`):
 *  1. idle: /health/live latency and a normal completion's latency;
 *  2. the tokenizer is fed 200,000 distinct words;
 *  3. 50 clients send maximum-size hostile requests (32 prompts of the most bytes a context can hold, too many
 *     tokens) without pause, while /health/live and normal completions are measured again;
 *  4. a full queue gets a burst of 240 concurrent requests, from new connections and then from open keep-alive
 *     ones: latency of the 429s, and every accepted request answered once with its own prompt; then the same
 *     bursts against a bare node:http server that answers 429 at once, the floor of what this machine allows.
 * The hostile clients run in a child process so that building and sending their bodies does not delay the probes.
 */
import { spawn } from 'node:child_process';
import { request as httpRequest, Agent } from 'node:http';
import { connect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Random } from '../src/engine/sampling.js';

const hostileRole = process.argv[2] === '--hostile';
const BASE = (hostileRole ? process.argv[3] : process.argv[2]) ?? process.env.BASE_URL ?? 'http://127.0.0.1:8080';
const MODEL = process.env.MODEL_NAME ?? 'chameleon-default';
const CONTEXT = 256;
const LONGEST_TOKEN_BYTES = 64;
const MAX_PROMPT_BYTES = CONTEXT * LONGEST_TOKEN_BYTES;

interface Reply { status: number; body: string; ms: number }

const BARE_429_SERVER = `
const server = require('node:http').createServer((req, res) => {
  res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '1' });
  res.end('{"error":{"message":"full","type":"rate_limit_error","param":null,"code":"queue_full"}}');
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));`;

function send(agent: Agent, method: string, path: string, body?: string | Buffer, base = BASE): Promise<Reply> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}${path}`, { method, agent, headers: body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), ms: performance.now() - started }));
    });
    // A server may answer 429 and close while a large body is still being written: the hostile clients count the
    // reset as status 0 (the reply may be lost, as HTTP/1.1 allows); everyone else treats it as a failure.
    req.on('error', (error: NodeJS.ErrnoException) => (hostileRole && (error.code === 'EPIPE' || error.code === 'ECONNRESET') ? resolve({ status: 0, body: '', ms: performance.now() - started }) : reject(error)));
    req.end(body);
  });
}

/**
 * POSTs one body on each of these open sockets at once and reads each reply (status, body, time from its write to
 * its last byte). The requests are serialised beforehand and the replies parsed by hand, as wrk does, so that the
 * client's own work (an HTTP agent per request) stays out of what is measured.
 */
function rawBurst(sockets: Socket[], host: string, bodies: string[]): Promise<Reply[]> {
  const requests = bodies.map((body) => Buffer.from(`POST /v1/completions HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`));
  return Promise.all(sockets.map((socket, i) => new Promise<Reply>((resolve, reject) => {
    let data = Buffer.alloc(0);
    const started = performance.now();
    socket.on('data', (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      const head = data.indexOf('\r\n\r\n');
      if (head < 0) return;
      const length = Number(/content-length: *(\d+)/i.exec(data.subarray(0, head).toString('latin1'))?.[1]);
      if (data.length < head + 4 + length) return;
      resolve({ status: Number(data.subarray(9, 12).toString('latin1')), body: data.subarray(head + 4, head + 4 + length).toString('utf8'), ms: performance.now() - started });
    });
    socket.on('error', reject);
    socket.on('close', () => reject(new Error(`connection ${i} closed without a complete reply`)));
    socket.write(requests[i]);
  })));
}

async function openSockets(base: string, count: number): Promise<Socket[]> {
  const { hostname, port } = new URL(base);
  return Promise.all(Array.from({ length: count }, () => new Promise<Socket>((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => resolve(socket));
    socket.setNoDelay(true);
    socket.on('error', reject);
  })));
}

/** A seeded uniform [0, 1) source (the engine's own generator). */
function seeded(seed: number): () => number {
  const rng = new Random(seed);
  return () => rng.next();
}

const random = seeded(7);
const word = () => Array.from({ length: 5 + Math.floor(random() * 4) }, () => String.fromCharCode(97 + Math.floor(random() * 26))).join('');
const fill = (unit: string, bytes: number) => unit.repeat(Math.floor(bytes / Buffer.byteLength(unit)));

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

const fmt = (ms: number) => `${ms.toFixed(1)} ms`;

if (hostileRole) {
  // Hostile clients: maximum-size bodies that pass the byte bound but hold far too many tokens.
  const clients = Number(process.argv[4]);
  const seconds = Number(process.argv[5]);
  const agent = new Agent({ keepAlive: true, maxSockets: clients });
  const prompts = [
    Array.from({ length: 4000 }, word).join(' ').slice(0, MAX_PROMPT_BYTES), // refused by the pre-token bound
    fill('日本語のテキスト', MAX_PROMPT_BYTES), // passes the bounds, tokenised, refused: ~11,000 tokens
    fill(' ', 15_000), // passes the bounds, tokenised, refused: ~1,900 tokens
    fill('-', MAX_PROMPT_BYTES) + '-', // one byte over the byte bound
  ];
  const bodies = prompts.map((p) => Buffer.from(JSON.stringify({ model: MODEL, prompt: Array.from({ length: 32 }, () => p) })));
  const statuses = new Map<number, number>();
  let sent = 0;
  const until = performance.now() + seconds * 1000;
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let i = c; performance.now() < until; i++) {
      const res = await send(agent, 'POST', '/v1/completions', bodies[i % bodies.length]);
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      sent++;
    }
  }));
  process.stdout.write(JSON.stringify({ sent, statuses: Object.fromEntries(statuses) }));
} else {
  const agent = new Agent({ keepAlive: true, maxSockets: 4 });
  const normal = JSON.stringify({ model: MODEL, prompt: 'The whale rose from the sea', max_tokens: 16, temperature: 0 });

  async function probe(seconds: number): Promise<{ live: number[]; completions: number[] }> {
    const live: number[] = [];
    const completions: number[] = [];
    const until = performance.now() + seconds * 1000;
    await Promise.all([
      (async () => {
        while (performance.now() < until) {
          const res = await send(agent, 'GET', '/health/live');
          if (res.status !== 200) throw new Error(`/health/live answered ${res.status}`);
          live.push(res.ms);
          await new Promise((r) => setTimeout(r, 10));
        }
      })(),
      (async () => {
        while (performance.now() < until) {
          const res = await send(agent, 'POST', '/v1/completions', normal);
          if (res.status !== 200) throw new Error(`a normal completion answered ${res.status}: ${res.body}`);
          completions.push(res.ms);
        }
      })(),
    ]);
    return { live, completions };
  }

  const ready = await send(agent, 'GET', '/health/ready');
  if (ready.status !== 200) throw new Error(`${BASE}/health/ready answered ${ready.status}`);
  console.log(`load-check against ${BASE}`);

  await probe(2); // warm-up
  const idle = await probe(10);
  console.log(`idle:    /health/live p50 ${fmt(percentile(idle.live, 50))} p99 ${fmt(percentile(idle.live, 99))} (${idle.live.length} probes); normal completion p50 ${fmt(percentile(idle.completions, 50))} p90 ${fmt(percentile(idle.completions, 90))} (${idle.completions.length})`);

  // 200,000 distinct words through the tokenizer: one prompt per request that passes the bounds (echo scoring,
  // max_tokens 0) but holds more tokens than the context, so that it is tokenised in full and refused without
  // using the engine (a request stops at its first refused prompt).
  const seen = new Set<string>();
  let tokenised = 0;
  const t0 = performance.now();
  while (seen.size < 200_000) {
    const words = Array.from({ length: 240 }, word);
    for (const w of words) seen.add(w);
    const res = await send(agent, 'POST', '/v1/completions', JSON.stringify({ model: MODEL, prompt: words.join(' '), max_tokens: 0, echo: true }));
    if (res.status === 400 && res.body.includes('tokens (beginning-of-text token included)')) tokenised += 1;
  }
  console.log(`tokenizer: ${seen.size} distinct words in ${tokenised} prompts tokenised in full and refused on their exact token count, ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  const after = await probe(5);
  console.log(`after 200k words, no load: /health/live p99 ${fmt(percentile(after.live, 99))}; normal completion p50 ${fmt(percentile(after.completions, 50))}`);

  const hostileSeconds = 20;
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--hostile', BASE, '50', String(hostileSeconds)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let childOut = '';
  child.stdout.on('data', (d: Buffer) => { childOut += d.toString(); });
  const hostileDone = new Promise<{ sent: number; statuses: Record<string, number> }>((resolve, reject) => {
    child.once('exit', (code) => (code === 0 ? resolve(JSON.parse(childOut) as { sent: number; statuses: Record<string, number> }) : reject(new Error(`hostile clients exited with ${code}`))));
  });
  await new Promise((r) => setTimeout(r, 2000)); // let the 50 clients get going
  const loaded = await probe(hostileSeconds - 4);
  const hostile = await hostileDone;
  const ratio = percentile(loaded.completions, 50) / percentile(idle.completions, 50);
  console.log(`hostile: 50 clients, 32 prompts x ${MAX_PROMPT_BYTES} bytes each: ${hostile.sent} requests in ${hostileSeconds} s, statuses ${JSON.stringify(hostile.statuses)}`);
  console.log(`hostile: /health/live p50 ${fmt(percentile(loaded.live, 50))} p99 ${fmt(percentile(loaded.live, 99))} (goal < 20 ms, ${loaded.live.length} probes); normal completion p50 ${fmt(percentile(loaded.completions, 50))} p90 ${fmt(percentile(loaded.completions, 90))} = ${ratio.toFixed(2)}x idle p50 (goal <= 1.2x)`);

  // Fast refusal: fill the queue with long requests (MAX_BATCH_SIZE 32 in flight, QUEUE_SIZE 256 waiting), then a burst
  // of 240: once from clients that must connect first (as a crowd of new clients does), once from clients whose
  // keep-alive connections are already open (as pooled clients do), which leaves out the cost of 240 TCP handshakes.
  const burstBodies = () => Array.from({ length: 240 }, (_, i) => JSON.stringify({ model: MODEL, prompt: `burst request ${i} ${word()}`, max_tokens: 4, echo: true, temperature: 0 }));
  const promptOf = (body: string) => (JSON.parse(body) as { prompt: string }).prompt;
  /** A burst of 240: over new connections through an HTTP agent, or over sockets opened just before (not timed). */
  const burstOf240 = async (base: string, warm: boolean) => {
    const bodies = burstBodies();
    const replies = warm
      ? await openSockets(base, bodies.length).then((sockets) => rawBurst(sockets, new URL(base).host, bodies).finally(() => sockets.forEach((socket) => socket.destroy())))
      : await (async () => {
        const agent = new Agent({ keepAlive: true, maxSockets: bodies.length });
        return Promise.all(bodies.map((body) => send(agent, 'POST', '/v1/completions', body, base))).finally(() => agent.destroy());
      })();
    return replies.map((reply, i) => ({ ...reply, prompt: promptOf(bodies[i]) }));
  };
  const fullQueueBurst = async (warm: boolean) => {
    const fillers = Array.from({ length: 9 }, (_, i) => {
      const prompts = Array.from({ length: 32 }, (_, j) => `filler ${i}-${j} ${word()}`);
      return { prompts, reply: send(new Agent(), 'POST', '/v1/completions', JSON.stringify({ model: MODEL, prompt: prompts, max_tokens: 48, ignore_eos: true, echo: true, temperature: 0 })) };
    });
    for (let i = 0; ; i++) {
      const metrics = await send(agent, 'GET', '/metrics');
      const depth = Number(/chameleon_queue_depth (\d+)/.exec(metrics.body)?.[1] ?? 0);
      const size = Number(process.env.QUEUE_SIZE ?? 256);
      if (depth >= size) break;
      if (i > 400) throw new Error(`the queue did not fill (depth ${depth} of ${size})`);
      await new Promise((r) => setTimeout(r, 25));
    }
    const burst = await burstOf240(BASE, warm);
    const refused = burst.filter((r) => r.status === 429);
    const accepted = burst.filter((r) => r.status === 200);
    const own = (r: Reply & { prompt: string }) => (JSON.parse(r.body) as { choices: Array<{ text: string }> }).choices[0].text.startsWith(r.prompt);
    const fillerReplies = await Promise.all(fillers.map(async (f) => ({ ...f, res: await f.reply })));
    const fillersOwn = fillerReplies.filter((f) => f.res.status === 200 && (JSON.parse(f.res.body) as { choices: Array<{ text: string; index: number }> }).choices.every((c) => c.text.startsWith(f.prompts[c.index]))).length;
    console.log(`burst:   240 concurrent on a full queue, ${warm ? 'connections already open' : 'new connections'}: ${refused.length} x 429 p50 ${fmt(percentile(refused.map((r) => r.ms), 50))} p99 ${fmt(percentile(refused.map((r) => r.ms), 99))} (goal < 50 ms); ${accepted.length} accepted, each with its own prompt: ${accepted.every(own)}; other statuses: ${burst.length - refused.length - accepted.length}; fillers (9 x 32 prompts, the queue's 256 + 32 in flight) answered 200 with their own prompts: ${fillersOwn} of 9`);
  };
  await fullQueueBurst(false);
  await fullQueueBurst(true);
  agent.destroy();

  // The floor on this machine: the same burst against a bare node:http server in its own process that answers every
  // request with a 429 at once (no framework, no engine sharing the cores).
  const bare = spawn(process.execPath, ['-e', BARE_429_SERVER], { stdio: ['ignore', 'pipe', 'inherit'] });
  const barePort = await new Promise<number>((resolve) => bare.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
  for (const warm of [false, true]) {
    const floors: number[] = [];
    for (let round = 0; round < 3; round++) {
      floors.push(percentile((await burstOf240(`http://127.0.0.1:${barePort}`, warm)).map((r) => r.ms), 99));
      await new Promise((r) => setTimeout(r, 300));
    }
    console.log(`floor:   the same burst against a bare node:http server answering 429 at once, ${warm ? 'connections already open' : 'new connections'}, 3 runs: p99 ${floors.map(fmt).join(' / ')}`);
  }
  bare.kill();
}
