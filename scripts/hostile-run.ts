/**
 * The hostile outside run (`npm run hostile-run`; it builds dist/ first when dist/ is missing or older than src/):
 * starts the built server (dist/server.js) as its own process on a free loopback port, with a fresh API_KEY and
 * ADMIN_TOKEN and an ADAPTER_DIRS folder holding one valid adapter beside traps (links out of the folder, a FIFO, a
 * file that is not safetensors, a header length of 2^60, a file over the size limit, a subfolder), and from this
 * process, over raw TCP sockets:
 *  A. adapter path tricks with the right admin token: every refusal must be the one generic sentence, and no
 *     answer may carry a byte of a file, an existence fact or a path it was sent;
 *  B. a seeded fuzz (HOSTILE_SEED, HOSTILE_REQUESTS) of malformed, oversized, duplicated, truncated and mutated
 *     requests, each from its own loopback source address (127.x.y.z) so that the throttle does not mask it;
 *  C. an admin brute force from one address: the throttle must engage (429 too_many_auth_failures with
 *     Retry-After), refuse the right token and the right key too, on a full queue as well, and leave the health
 *     routes open.
 * Every non-2xx answer must be JSON in OpenAI's error shape; a 5xx (but a documented 504), a 2xx without a valid
 * key outside the health routes, a secret in an answer, a connection closed without an answer where the client did
 * not cause it, or one closed after an answer that did not say Connection: close, is a violation. At the end the
 * server must be alive (/health/live, a real completion) and its log must hold no secret and no error line; its
 * resident memory is printed before and after. Exit code 1 on any violation.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ADAPTER_FILE_REFUSED } from '../src/adaptation/adapter-files.js';
import { Random } from '../src/engine/sampling.js';
import { ModelPackage } from '../src/model/package.js';

const SEED = Number(process.env.HOSTILE_SEED ?? 1);
const REQUESTS = Number(process.env.HOSTILE_REQUESTS ?? 3000);
const CONCURRENCY = Number(process.env.HOSTILE_CONCURRENCY ?? 12);
const MODEL_DIR = 'models/default';
const MODEL = 'chameleon-default';
const QUEUE_SIZE = 16;
const MAX_BATCH_SIZE = 8;
const HEADERS_TIMEOUT_MS = 1000;
const RECEIVE_TIMEOUT_MS = 2000;
const REQUEST_TIMEOUT_MS = 5000;

// ---------------------------------------------------------------------------------------------------------------
// Build, the adapter folder, the server
// ---------------------------------------------------------------------------------------------------------------

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs);
  }
  return newest;
}

if (!existsSync('dist/server.js') || statSync('dist/server.js').mtimeMs < newestMtime('src')) {
  console.log('dist/ is missing or older than src/: npm run build');
  execFileSync('npm', ['run', '--silent', 'build'], { stdio: 'inherit' });
}

const API_KEY = randomBytes(32).toString('base64url');
const ADMIN_TOKEN = randomBytes(32).toString('base64url');
const scratch = mkdtempSync(join(tmpdir(), 'hostile-run-'));
const root = join(scratch, 'adapters');
const outside = join(scratch, 'outside');
mkdirSync(root);
mkdirSync(outside);
mkdirSync(join(root, 'subfolder'));

/** A .safetensors file (F32) holding the given tensors. */
function safetensors(path: string, tensors: Record<string, { shape: number[]; data: Float32Array }>): void {
  let offset = 0;
  const header: Record<string, unknown> = {};
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  const json = Buffer.from(JSON.stringify(header));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([length, json, ...Object.values(tensors).map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))]));
}

const pkg = ModelPackage.open(MODEL_DIR);
/** The package's static LoRA under PEFT's names: a valid adapter for the default model. */
function staticLora(path: string): void {
  const rank = pkg.manifest.lora!.rank;
  safetensors(path, {
    'base_model.model.lm_head.lora_A.weight': { shape: [rank, pkg.dims.d_model], data: pkg.readTensor('static_lora_a') },
    'base_model.model.lm_head.lora_B.weight': { shape: [pkg.dims.vocab_size, rank], data: pkg.readTensor('static_lora_b') },
  });
}

const PASSWD_LIKE = 'root:x:0:0:root:/root:/bin/bash\n';
const HUGE_HEADER_LENGTH = 2n ** 60n;
staticLora(join(root, 'valid.safetensors'));
staticLora(join(outside, 'valid.safetensors'));
symlinkSync('/etc/passwd', join(root, 'passwd.safetensors'));
symlinkSync(outside, join(root, 'outside-link'));
symlinkSync(join(outside, 'valid.safetensors'), join(root, 'escape.safetensors'));
symlinkSync(join(root, 'valid.safetensors'), join(root, 'alias.safetensors'));
execFileSync('mkfifo', [join(root, 'fifo.safetensors')]);
writeFileSync(join(root, 'notes.txt'), PASSWD_LIKE);
writeFileSync(join(root, 'text.safetensors'), PASSWD_LIKE.repeat(8));
{
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(HUGE_HEADER_LENGTH);
  writeFileSync(join(root, 'huge-header.safetensors'), Buffer.concat([length, Buffer.from('{"lora_a":')]));
  // over the 64 MiB limit, sparse: costs no disk
  const fd = openSync(join(root, 'oversized.safetensors'), 'w');
  writeFileSync(fd, length);
  closeSync(fd);
  execFileSync('truncate', ['-s', String(65 * 2 ** 20), join(root, 'oversized.safetensors')]);
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolvePort(port));
    });
  });
}

const PORT = await freePort();
const BASE = `http://127.0.0.1:${PORT}`;
const logPath = join(scratch, 'server.log');
const logFd = openSync(logPath, 'w');
const server = spawn(process.execPath, ['dist/server.js'], {
  env: {
    ...process.env,
    HOST: '127.0.0.1', PORT: String(PORT), MODEL_DIR, MODEL_NAME: MODEL, API_KEY, ADMIN_TOKEN, ADAPTER_DIRS: root,
    LOG_LEVEL: 'info', THREADS: '1', MAX_BATCH_SIZE: String(MAX_BATCH_SIZE), QUEUE_SIZE: String(QUEUE_SIZE), MAX_WAIT_MS: '5', MAX_ADAPTERS: '4',
    REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS), HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS), RECEIVE_TIMEOUT_MS: String(RECEIVE_TIMEOUT_MS),
    KEEP_ALIVE_TIMEOUT_MS: '2000', RETRY_AFTER_SECONDS: '1', SHUTDOWN_TIMEOUT_MS: '10000',
  },
  stdio: ['ignore', logFd, logFd],
});
const serverExit = new Promise<number | null>((resolveExit) => server.once('exit', resolveExit));

function rssMiB(): number {
  const status = readFileSync(`/proc/${server.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitReady(): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (server.exitCode !== null) throw new Error(`the server exited with ${server.exitCode}; its log: ${logPath}`);
    try {
      if ((await fetch(`${BASE}/health/ready`)).status === 200) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error('the server did not become ready');
}

// ---------------------------------------------------------------------------------------------------------------
// Raw HTTP over node:net
// ---------------------------------------------------------------------------------------------------------------

interface Answer {
  status: number;
  headers: Map<string, string[]>;
  body: Buffer;
}

const header = (answer: Answer, name: string): string | undefined => answer.headers.get(name)?.join(', ');

/** The complete responses at the start of `data` (interim 1xx skipped); `heads`: which requests were HEAD. */
function parseAnswers(data: Buffer, heads: boolean[], closed: boolean): { answers: Answer[]; garbage: string | null; partial: boolean } {
  const answers: Answer[] = [];
  let at = 0;
  while (at < data.length) {
    const end = data.indexOf('\r\n\r\n', at);
    const status = /^HTTP\/1\.[01] (\d{3}) /.exec(data.subarray(at, at + 16).toString('latin1'));
    if (status === null && data.length - at >= 13) return { answers, garbage: data.subarray(at, at + 200).toString('latin1'), partial: false };
    if (end < 0) return { answers, garbage: null, partial: true };
    const lines = data.subarray(at, end).toString('latin1').split('\r\n');
    const headers = new Map<string, string[]>();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).toLowerCase();
      headers.set(name, [...(headers.get(name) ?? []), line.slice(colon + 1).trim()]);
    }
    const code = Number(status![1]);
    const start = end + 4;
    if (code < 200) {
      at = start;
      continue;
    }
    const bodiless = heads[answers.length] === true || code === 204 || code === 304;
    const length = headers.get('content-length');
    if (bodiless) {
      answers.push({ status: code, headers, body: Buffer.alloc(0) });
      at = start;
    } else if (/chunked/i.test(headers.get('transfer-encoding')?.join(',') ?? '')) {
      const chunks: Buffer[] = [];
      let p = start;
      for (;;) {
        const lineEnd = data.indexOf('\r\n', p);
        if (lineEnd < 0) return { answers, garbage: null, partial: true };
        const size = parseInt(data.subarray(p, lineEnd).toString('latin1'), 16);
        if (!Number.isFinite(size)) return { answers, garbage: `bad chunk size in an answer: ${data.subarray(p, lineEnd).toString('latin1').slice(0, 40)}`, partial: false };
        if (data.length < lineEnd + 2 + size + 2) return { answers, garbage: null, partial: true };
        chunks.push(data.subarray(lineEnd + 2, lineEnd + 2 + size));
        p = lineEnd + 2 + size + 2;
        if (size === 0) break;
      }
      answers.push({ status: code, headers, body: Buffer.concat(chunks) });
      at = p;
    } else if (length !== undefined) {
      const n = Number(length[0]);
      if (length.length > 1 || !Number.isSafeInteger(n)) return { answers, garbage: `an answer with Content-Length ${length.join(', ')}`, partial: false };
      if (data.length < start + n) return { answers, garbage: null, partial: true };
      answers.push({ status: code, headers, body: data.subarray(start, start + n) });
      at = start + n;
    } else {
      if (!closed) return { answers, garbage: null, partial: true };
      answers.push({ status: code, headers, body: data.subarray(start) });
      at = data.length;
    }
  }
  return { answers, garbage: null, partial: false };
}

interface Exchange {
  /** Written in order; a number is a pause of that many ms. */
  parts: Array<Buffer | string | number>;
  /** Requests in the parts (more than one: pipelined). */
  requests: number;
  heads?: boolean[];
  /** After the parts: the client half-closes (FIN) or resets the connection. */
  end?: 'fin' | 'reset';
  /** Hang up as soon as the answer starts (a client leaving mid-stream). */
  hangUp?: boolean;
  /** After the answers, send GET /health/live on the same connection unless they said Connection: close. */
  followUp?: boolean;
  timeoutMs?: number;
}

interface Outcome {
  answers: Answer[];
  /** The follow-up was answered, the connection was closed under it, or it was not sent. */
  followUp: 'answered' | 'closed' | 'not sent';
  closedByServer: boolean;
  timedOut: boolean;
  hungUp: boolean;
  garbage: string | null;
  error: string | null;
}

const FOLLOW_UP = 'GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';

function exchange(spec: Exchange, localAddress: string): Promise<Outcome> {
  return new Promise((resolveOutcome) => {
    const socket = connect({ host: '127.0.0.1', port: PORT, localAddress });
    socket.setNoDelay(true);
    let data = Buffer.alloc(0);
    let closed = false;
    let done = false;
    let followUp: Outcome['followUp'] = 'not sent';
    let main = -1;
    let error: string | null = null;
    let hungUp = false;
    const heads = [...(spec.heads ?? []), false];
    const finish = (timedOut: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      const parsed = parseAnswers(data, heads, closed);
      const answers = main >= 0 ? parsed.answers.slice(0, main) : parsed.answers.slice(0, spec.requests);
      if (followUp === 'not sent' || followUp === 'answered') {
        // nothing to change
      } else if (parsed.answers.length > main) followUp = 'answered';
      socket.destroy();
      resolveOutcome({ answers, followUp, closedByServer: closed && !hungUp, timedOut, hungUp, garbage: parsed.garbage, error });
    };
    const timer = setTimeout(() => finish(true), spec.timeoutMs ?? 6000);
    socket.on('data', (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      if (spec.hangUp === true) {
        hungUp = true;
        return finish(false);
      }
      const parsed = parseAnswers(data, heads, false);
      if (parsed.garbage !== null) return finish(false);
      if (main < 0 && parsed.answers.length >= spec.requests) {
        const last = parsed.answers[spec.requests - 1]!;
        if (spec.followUp === true && !/close/i.test(header(last, 'connection') ?? '') && !closed) {
          main = spec.requests;
          followUp = 'closed';
          socket.write(FOLLOW_UP);
        } else {
          main = spec.requests;
          return finish(false);
        }
      } else if (main >= 0 && parsed.answers.length > main) {
        followUp = 'answered';
        return finish(false);
      }
    });
    socket.on('error', (e: NodeJS.ErrnoException) => { error ??= e.code ?? e.message; });
    socket.on('close', () => { closed = true; finish(false); });
    socket.on('connect', async () => {
      for (const part of spec.parts) {
        if (done || socket.destroyed) return;
        if (typeof part === 'number') await sleep(part);
        else socket.write(part);
      }
      if (spec.end === 'fin') socket.end();
      if (spec.end === 'reset') socket.resetAndDestroy();
    });
  });
}

/** One request's bytes. `host: null` leaves Host out; `length: null` leaves Content-Length out. */
function request(o: {
  method?: string; target: string; version?: string; host?: string | null; auth?: string | null;
  headers?: Array<[string, string]>; body?: Buffer | string; type?: string | null; length?: string | null;
}): Buffer {
  const body = o.body === undefined ? undefined : Buffer.from(o.body);
  const lines = [`${o.method ?? (body === undefined ? 'GET' : 'POST')} ${o.target} HTTP/${o.version ?? '1.1'}`];
  if (o.host !== null) lines.push(`Host: ${o.host ?? `127.0.0.1:${PORT}`}`);
  if (o.auth !== undefined && o.auth !== null) lines.push(`Authorization: ${o.auth}`);
  if (body !== undefined && o.type !== null) lines.push(`Content-Type: ${o.type ?? 'application/json'}`);
  for (const [name, value] of o.headers ?? []) lines.push(`${name}: ${value}`);
  if (body !== undefined && o.length !== null) lines.push(`Content-Length: ${o.length ?? body.length}`);
  return Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1'), body ?? Buffer.alloc(0)]);
}

// ---------------------------------------------------------------------------------------------------------------
// Checks and the tally
// ---------------------------------------------------------------------------------------------------------------

const violations: string[] = [];
function violation(text: string): void {
  violations.push(text);
}

const ERROR_TYPES = new Set(['invalid_request_error', 'authentication_error', 'permission_error', 'rate_limit_error', 'server_error', 'timeout_error', 'not_found_error']);

/** What is wrong with a non-2xx answer's body, measured against OpenAI's { error: { message, type, param, code } }. */
function shapeProblem(answer: Answer): string | null {
  if (!/^application\/json/i.test(header(answer, 'content-type') ?? '')) return `content-type ${header(answer, 'content-type')}`;
  let body: unknown;
  try {
    body = JSON.parse(answer.body.toString('utf8'));
  } catch {
    return 'not JSON';
  }
  const outer = body as { error?: Record<string, unknown> };
  if (body === null || typeof body !== 'object' || Object.keys(body).join() !== 'error') return 'not { error }';
  const error = outer.error;
  if (error === null || typeof error !== 'object' || Object.keys(error).sort().join() !== 'code,message,param,type') return 'error has other fields than message, type, param, code';
  if (typeof error.message !== 'string' || error.message === '') return 'message is not a text';
  if (typeof error.type !== 'string' || !ERROR_TYPES.has(error.type)) return `type ${JSON.stringify(error.type)}`;
  if (error.param !== null && typeof error.param !== 'string') return 'param is neither a text nor null';
  if (typeof error.code !== 'string') return 'code is not a text';
  return null;
}

const errorOf = (answer: Answer): { message: string; type: string; param: string | null; code: string } =>
  (JSON.parse(answer.body.toString('utf8')) as { error: { message: string; type: string; param: string | null; code: string } }).error;

/** A 2xx without a valid key is fine only from the health routes. */
function isHealthAnswer(answer: Answer, head: boolean): boolean {
  if (head) return true; // no body to tell: the request's own check below
  try {
    const body = JSON.parse(answer.body.toString('utf8')) as Record<string, unknown>;
    return (body.status === 'ok' || body.status === 'ready') && Object.keys(body).every((k) => ['status', 'model', 'execution_provider'].includes(k));
  } catch {
    return false;
  }
}

interface Case extends Exchange {
  category: string;
  /** Whether the requests carry a valid API key (or the admin token). */
  keyed: boolean;
  /** The request goes to a health route (HEAD requests are judged by this). */
  open?: boolean;
  /** x-request-id sent, and whether it is one the server keeps. */
  requestId?: { value: string; good: boolean };
  /** The statuses the first answer may have (absent: any, in shape). */
  expect?: number[];
  /** A missing answer is the client's doing (it closed, reset, or hung up) or documented: counted apart. */
  noAnswerOk?: string;
  /** A short name of what was sent, for the list of violations. */
  what: string;
}

interface CategoryTally { sent: number; answered: number; statuses: Map<number, number>; noAnswer: number }
const tally = new Map<string, CategoryTally>();
const closesWithoutAnswer = new Map<string, number>();
let documented504 = 0;
let followUps = 0;
let withoutRequestId = 0;
let shapeChecked = 0;

function record(c: Case, outcome: Outcome): void {
  const t = tally.get(c.category) ?? { sent: 0, answered: 0, statuses: new Map(), noAnswer: 0 };
  tally.set(c.category, t);
  t.sent++;
  const where = `${c.category}: ${c.what}`;
  const show = (a: Answer) => `${a.status} ${a.body.toString('utf8').slice(0, 160)}`;
  if (outcome.garbage !== null) violation(`${where}: an answer that is not HTTP: ${JSON.stringify(outcome.garbage.slice(0, 120))}`);
  if (outcome.answers.length === 0) {
    t.noAnswer++;
    if (c.noAnswerOk !== undefined) closesWithoutAnswer.set(c.noAnswerOk, (closesWithoutAnswer.get(c.noAnswerOk) ?? 0) + 1);
    else violation(`${where}: no answer (${outcome.timedOut ? 'still open after the client\'s timeout' : `closed${outcome.error ? `, ${outcome.error}` : ''}`})`);
    return;
  }
  t.answered++;
  if (outcome.hungUp) closesWithoutAnswer.set('the client hung up mid-answer', (closesWithoutAnswer.get('the client hung up mid-answer') ?? 0) + 1);
  outcome.answers.forEach((answer, index) => {
    t.statuses.set(answer.status, (t.statuses.get(answer.status) ?? 0) + 1);
    if (outcome.hungUp) return;
    const text = answer.body.toString('utf8');
    if (text.includes(API_KEY) || text.includes(ADMIN_TOKEN)) violation(`${where}: a secret in the answer: ${show(answer)}`);
    if (answer.status < 200 || answer.status >= 300) {
      const bodiless = c.heads?.[index] === true && answer.body.length === 0; // an answer to HEAD has no body to check
      if (!bodiless) {
        shapeChecked++;
        const problem = shapeProblem(answer);
        if (problem !== null) return violation(`${where}: not OpenAI's error shape (${problem}): ${show(answer)}`);
      }
      if (answer.status >= 500) {
        if (!bodiless && answer.status === 504 && errorOf(answer).code === 'timeout') documented504++;
        else violation(`${where}: ${show(answer)}`);
      }
    } else if (!c.keyed && !(c.open === true && (c.heads?.[index] === true || isHealthAnswer(answer, false)))) {
      violation(`${where}: ${answer.status} without a valid key: ${show(answer)}`);
    }
    if (index === 0 && c.expect !== undefined && !c.expect.includes(answer.status)) violation(`${where}: ${answer.status}, expected ${c.expect.join(' or ')}: ${show(answer)}`);
    const id = header(answer, 'x-request-id');
    if (id === undefined) withoutRequestId++;
    else if (!/^[A-Za-z0-9._:-]{1,128}$/.test(id)) violation(`${where}: x-request-id ${JSON.stringify(id.slice(0, 80))} is not an id`);
    if (c.requestId !== undefined && id !== undefined && index === 0) {
      if (c.requestId.good && id !== c.requestId.value) violation(`${where}: a good x-request-id was replaced by ${id}`);
      if (!c.requestId.good && id === c.requestId.value) violation(`${where}: a bad x-request-id was echoed`);
    }
  });
  if (outcome.followUp !== 'not sent') followUps++;
  if (outcome.followUp === 'closed') {
    const last = outcome.answers.at(-1)!;
    violation(`${where}: the connection was closed after an answer without Connection: close (${show(last)})`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The fuzz: seeded generators of hostile requests
// ---------------------------------------------------------------------------------------------------------------

const rng = new Random(SEED);
const rnd = () => rng.next();
const int = (n: number) => Math.floor(rnd() * n);
const pick = <T>(items: readonly T[]): T => items[int(items.length)]!;
const chance = (p: number) => rnd() < p;
const KEY = `Bearer ${API_KEY}`;
const PROMPTS = ['The whale', 'Dear Bob, the meeting', 'Permission is hereby granted', 'The Congress shall', 'café 日本 🙂 naïve', 'a', ' ', '\u0000\u0001', 'x\ud800y'];
const words = (n: number) => Array.from({ length: n }, () => pick(['the', 'sea', 'ship', 'license', 'nation', 'email', 'whale', '🙂', 'é'])).join(' ');

/** A valid body for one of the POST routes. */
function validBody(path: string): Record<string, unknown> {
  const prompt = chance(0.7) ? pick(PROMPTS) : words(1 + int(20));
  switch (path) {
    case '/v1/completions': {
      const body: Record<string, unknown> = { model: MODEL, prompt: chance(0.2) ? [prompt, pick(PROMPTS)] : prompt, max_tokens: int(5) };
      if (chance(0.3)) body.temperature = pick([0, 0.5, 1, 2]);
      if (chance(0.2)) body.stream = true;
      if (chance(0.2)) body.logprobs = int(3);
      if (chance(0.1)) body.echo = true;
      if (chance(0.1)) body.n = 2;
      if (chance(0.1)) body.adaptation = pick(['batch', 'request', 'static', 'none']);
      if (chance(0.1)) body.model = 'library:sotu';
      return body;
    }
    case '/v1/chat/completions':
      return { model: MODEL, messages: [{ role: pick(['user', 'system', 'developer']), content: prompt }, ...(chance(0.3) ? [{ role: 'assistant', content: 'ok' }, { role: 'user', content: 'more' }] : [])], max_tokens: int(5), ...(chance(0.2) ? { stream: true } : {}) };
    case '/tokenize':
      return chance(0.7) ? { model: MODEL, prompt } : { messages: [{ role: 'user', content: prompt }], return_token_strs: true };
    case '/detokenize':
      return { model: MODEL, tokens: Array.from({ length: 1 + int(10) }, () => int(pkg.dims.vocab_size)) };
    default:
      return { name: `fuzz-${int(1000)}`, examples: [prompt] };
  }
}

const POST_ROUTES = ['/v1/completions', '/v1/completions', '/v1/chat/completions', '/tokenize', '/detokenize', '/v1/adapters'];
const GET_ROUTES = ['/v1/models', `/v1/models/${MODEL}`, '/v1/models/library:email', '/v1/adapters', '/tokenizer_info', '/metrics', '/docs/json', '/health', '/health/live', '/health/ready'];
const isOpen = (path: string) => /^\/health(\/live|\/ready)?(\?|$)/.test(path);

/** A well-formed request to a random route: target, method, body. */
function wellFormed(): { method: string; target: string; body?: string } {
  if (chance(0.55)) {
    const target = pick(POST_ROUTES);
    return { method: 'POST', target, body: JSON.stringify(validBody(target)) };
  }
  return { method: chance(0.1) ? 'HEAD' : 'GET', target: pick(GET_ROUTES) };
}

const INTERESTING: unknown[] = [
  null, true, false, 0, -1, 1, 2, 5, 8, 9, 255, 256, 257, 4096, 65_535, 2 ** 31, 2 ** 53, -(2 ** 53), 1e308, -1e308, 0.5, -0.0, 1e-9,
  '', 'a', 'x'.repeat(2000), 'x'.repeat(17_000), [], [[]], {}, [0], [-1], [1e9], [50_000], ['a', 'b'], { a: 1 }, '\u0000', '\ud800', '日本', '../../etc/passwd',
  Array.from({ length: 9 }, () => 'p'), Array.from({ length: 64 }, (_, i) => i), { 1: 100, 2: -100 }, { '-1': 5 }, { x: 1 },
];

/** A mutated body: fields deleted, retyped, added, nested, or the bytes cut and flipped. */
function mutatedBody(path: string): Buffer {
  let value: unknown = validBody(path);
  for (let k = 1 + int(3); k > 0; k--) {
    const body = value as Record<string, unknown>;
    const keys = value !== null && typeof value === 'object' && !Array.isArray(value) ? Object.keys(body) : [];
    const roll = rnd();
    if (keys.length === 0 || roll < 0.05) value = pick(INTERESTING);
    else if (roll < 0.45) body[pick(keys)] = pick(INTERESTING);
    else if (roll < 0.55) delete body[pick(keys)];
    else if (roll < 0.65) body[pick(['frobnicate', 'constructor', 'prototype', 'model', 'stream', 'max_tokens', 'stop', 'logit_bias', 'n', 'top_logprobs', 'stream_options', 'response_format', 'suffix', 'best_of', 'min_tokens', 'stop_token_ids', 'seed'])] = pick(INTERESTING);
    else if (roll < 0.7) {
      const depth = 1 + int(3000);
      body.prompt = JSON.parse(`${'['.repeat(depth)}"a"${']'.repeat(depth)}`);
    }
    else if (roll < 0.75) body.messages = pick([[], [{ role: 'tool', content: 'x' }], [{ role: 'user' }], [{ role: 'user', content: [{ type: 'image_url', image_url: 'x' }] }], [{ role: 'user', content: [{ type: 'text', text: 'hi' }] }], Array.from({ length: 200 }, () => ({ role: 'user', content: 'hi' }))]);
    else if (roll < 0.8) body.tokens = pick([[-1], [2 ** 40], ['1'], [pkg.dims.vocab_size], Array.from({ length: 3000 }, () => 1)]);
    else if (roll < 0.85) body.max_tokens = pick([256, 10_000, 2 ** 31 - 1, -5, 1.5]);
    else if (roll < 0.9) Object.assign(body, { max_tokens: 64 + int(180), ignore_eos: true, n: 1 + int(4) });
    else if (roll < 0.95) body.prompt = Array.from({ length: 1 + int(40) }, () => pick(PROMPTS));
    else body.stop = pick([['.'], ['a', 'b', 'c', 'd', 'e'], '', [''], 'x'.repeat(500)]);
  }
  let text = JSON.stringify(value) ?? 'undefined';
  if (chance(0.15)) text = `{"__proto__":{"polluted":1},${text.slice(1)}`;
  let bytes = Buffer.from(text);
  if (chance(0.2)) {
    // byte-level damage: cut, flip, insert
    const copy = Buffer.from(bytes);
    for (let k = 1 + int(4); k > 0 && copy.length > 0; k--) copy[int(copy.length)] = int(256);
    bytes = chance(0.3) ? copy.subarray(0, int(copy.length)) : copy;
  }
  return bytes;
}

const wrongKey = (): string => pick([
  () => `Bearer ${randomBytesSeeded(43)}`,
  () => `Bearer ${randomBytesSeeded(1 + int(200))}`,
  () => `Bearer ${API_KEY.slice(0, -1)}`,
  () => `Bearer ${API_KEY}x`,
  () => `Bearer ${API_KEY.toUpperCase() === API_KEY ? API_KEY.toLowerCase() : API_KEY.toUpperCase()}`,
  () => `Basic ${Buffer.from(`user:${API_KEY}`).toString('base64')}`,
  () => API_KEY,
  () => 'Bearer',
  () => 'Bearer ',
  () => `Bearer ${API_KEY} ${API_KEY}`,
  () => `Token ${API_KEY}`,
  () => '',
])();

/** Seeded base64url text of `n` characters (a wrong key). */
function randomBytesSeeded(n: number): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  return Array.from({ length: n }, () => alphabet[int(64)]).join('');
}

const fields = (count: number): Array<[string, string]> => Array.from({ length: count }, (_, i) => [`x-f${i}`, 'v']);

type Generator = () => Omit<Case, 'category'>;

const GENERATORS: Array<[string, number, Generator]> = [
  ['well-formed, with the key', 14, () => {
    const r = wellFormed();
    return { parts: [request({ ...r, auth: KEY })], requests: 1, heads: [r.method === 'HEAD'], keyed: true, open: isOpen(r.target), followUp: true, what: `${r.method} ${r.target}` };
  }],
  ['well-formed, no key', 5, () => {
    const r = wellFormed();
    return { parts: [request(r)], requests: 1, heads: [r.method === 'HEAD'], keyed: false, open: isOpen(r.target), expect: isOpen(r.target) ? [200] : [401], followUp: true, what: `${r.method} ${r.target}` };
  }],
  ['wrong key', 6, () => {
    const r = wellFormed();
    const auth = wrongKey();
    return { parts: [request({ ...r, auth })], requests: 1, heads: [r.method === 'HEAD'], keyed: false, open: isOpen(r.target), expect: isOpen(r.target) ? [200] : [401], followUp: true, what: `${r.method} ${r.target} with ${JSON.stringify(auth.slice(0, 12))}...` };
  }],
  ['key spelled otherwise', 2, () => {
    const r = wellFormed();
    const auth = pick([`bearer ${API_KEY}`, `BEARER ${API_KEY}`, `Bearer    ${API_KEY}   `, `Bearer ${ADMIN_TOKEN}`, `Bearer\t${API_KEY}`]);
    return { parts: [request({ ...r, auth })], requests: 1, heads: [r.method === 'HEAD'], keyed: true, open: isOpen(r.target), followUp: true, what: `${r.method} ${r.target}` };
  }],
  ['two Authorization headers', 3, () => {
    const r = wellFormed();
    const [a, b] = pick([[KEY, KEY], [KEY, wrongKey()], [wrongKey(), KEY], [`Bearer ${ADMIN_TOKEN}`, KEY]]);
    return { parts: [request({ ...r, auth: a, headers: [['Authorization', b!]] })], requests: 1, heads: [r.method === 'HEAD'], keyed: false, open: isOpen(r.target), expect: [400], followUp: true, what: `${r.method} ${r.target}` };
  }],
  ['two Host headers', 2, () => {
    const r = wellFormed();
    return { parts: [request({ ...r, auth: KEY, headers: [['Host', pick(['evil.example', '127.0.0.1', ''])]] })], requests: 1, heads: [r.method === 'HEAD'], keyed: true, expect: [400], followUp: true, what: `${r.method} ${r.target}` };
  }],
  ['no Host', 2, () => {
    const r = wellFormed();
    const version = pick(['1.1', '1.1', '1.0']);
    return { parts: [request({ ...r, auth: KEY, host: null, version })], requests: 1, heads: [r.method === 'HEAD'], keyed: true, expect: version === '1.1' ? [400] : undefined, followUp: version === '1.1', what: `HTTP/${version} ${r.method} ${r.target}` };
  }],
  ['odd Host', 1, () => {
    const r = wellFormed();
    const host = pick(['', 'x'.repeat(5000), 'a, b', '[::1]:99999', 'host\u00e9', '127.0.0.1:0', 'localhost.', '@evil']);
    return { parts: [request({ ...r, auth: KEY, host })], requests: 1, heads: [r.method === 'HEAD'], keyed: true, followUp: true, what: `${r.method} ${r.target} Host ${JSON.stringify(host.slice(0, 12))}` };
  }],
  ['100+ header fields', 3, () => {
    const r = wellFormed();
    const extra = 90 + int(40);
    const built = request({ ...r, auth: KEY, headers: fields(extra) });
    const total = built.toString('latin1').split('\r\n\r\n')[0]!.split('\r\n').length - 1;
    return { parts: [built], requests: 1, heads: [r.method === 'HEAD'], keyed: true, expect: total > 100 ? [431] : undefined, followUp: true, what: `${total} fields, ${r.method} ${r.target}` };
  }],
  ['~2,000 header fields', 1, () => {
    const r = wellFormed();
    const count = 1900 + int(200);
    return { parts: [request({ ...r, auth: KEY, headers: fields(count) })], requests: 1, heads: [r.method === 'HEAD'], keyed: true, expect: [431], followUp: true, what: `${count} fields` };
  }],
  ['oversized headers', 2, () => {
    const r = wellFormed();
    const size = 16_500 + int(40_000);
    const headers: Array<[string, string]> = chance(0.5) ? [['X-Big', 'b'.repeat(size)]] : Array.from({ length: 40 }, (_, i) => [`x-m${i}`, 'm'.repeat(Math.ceil(size / 40))]);
    return { parts: [request({ ...r, auth: KEY, headers })], requests: 1, heads: [r.method === 'HEAD'], keyed: true, expect: [431], followUp: true, what: `${size} bytes of headers` };
  }],
  ['bad chunked encoding', 3, () => {
    const json = JSON.stringify(validBody('/tokenize'));
    const head = (te = 'chunked') => request({ target: '/tokenize', method: 'POST', auth: KEY, headers: [['Transfer-Encoding', te]], length: null, body: '' });
    const len = Buffer.byteLength(json).toString(16);
    const variant = pick<[string, Buffer | string, number[] | undefined]>([
      ['not hex', `zz\r\n${json}\r\n0\r\n\r\n`, [400]],
      ['a size overflowing 64 bits', `fffffffffffffffffffff\r\n${json}\r\n0\r\n\r\n`, [400]],
      ['a negative size', `-1\r\n${json}\r\n0\r\n\r\n`, [400]],
      ['no CRLF after the data', `${len}\r\n${json}XX0\r\n\r\n`, [400]],
      ['a 20 KB chunk extension', `${len};${'e'.repeat(20_000)}\r\n${json}\r\n0\r\n\r\n`, [400, 413]],
      ['bare LF', `${len}\n${json}\n0\n\n`, undefined],
      ['a valid body in two chunks', `1\r\n${json.slice(0, 1)}\r\n${(Buffer.byteLength(json) - 1).toString(16)}\r\n${json.slice(1)}\r\n0\r\n\r\n`, [200]],
      ['trailers', `${len}\r\n${json}\r\n0\r\nX-Trailer: 1\r\n\r\n`, [200]],
    ]);
    const te = pick(['chunked', 'chunked', 'Chunked', 'chunked, chunked', 'gzip, chunked', 'identity, chunked']);
    return { parts: [head(te), variant[1]], requests: 1, keyed: true, expect: te.toLowerCase() === 'chunked' ? variant[2] : undefined, followUp: true, what: `${variant[0]}, Transfer-Encoding ${te}` };
  }],
  ['Content-Length tricks', 4, () => {
    const body = JSON.stringify(validBody('/tokenize'));
    const n = Buffer.byteLength(body);
    const variant = pick<[string, Array<[string, string]>, number[] | undefined]>([
      ['two different', [['Content-Length', String(n)], ['Content-Length', String(n + 1)]], [400]],
      ['two equal', [['Content-Length', String(n)], ['Content-Length', String(n)]], undefined],
      ['a list', [['Content-Length', `${n}, ${n}`]], undefined],
      ['a sign', [['Content-Length', `+${n}`]], [400]],
      ['negative', [['Content-Length', '-1']], [400]],
      ['hex', [['Content-Length', `0x${n.toString(16)}`]], [400]],
      ['overflowing', [['Content-Length', '99999999999999999999999']], [400, 413]],
      ['with Transfer-Encoding', [['Content-Length', String(n)], ['Transfer-Encoding', 'chunked']], [400]],
    ]);
    return { parts: [request({ target: '/tokenize', auth: KEY, body, length: null, headers: variant[1] })], requests: 1, keyed: true, expect: variant[2], followUp: true, what: variant[0] };
  }],
  ['Content-Length mismatch', 3, () => {
    const body = JSON.stringify(validBody('/tokenize'));
    const n = Buffer.byteLength(body);
    if (chance(0.3)) {
      return { parts: [request({ target: '/tokenize', auth: KEY, body, length: String(n + 1 + int(100)) })], requests: 1, keyed: true, expect: [408], timeoutMs: RECEIVE_TIMEOUT_MS + 3000, what: 'longer than the body (the server waits for the rest)' };
    }
    const cut = 1 + int(n - 1);
    // the rest of the body is read as the next request
    return { parts: [request({ target: '/tokenize', auth: KEY, body, length: String(cut) })], requests: 2, keyed: true, expect: [400], what: `${cut} of ${n} bytes counted` };
  }],
  ['invalid method', 3, () => {
    const method = pick(['FOO', 'G\u0000ET', 'get', 'GET\u0001', 'PROPFIND', 'TRACE', 'CONNECT', 'OPTIONS', 'PATCH', 'PUT', 'DELETE', 'M-SEARCH', '', 'POST POST', 'x'.repeat(300), 'PRI']);
    const target = method === 'CONNECT' ? '127.0.0.1:22' : pick(['/v1/completions', '/v1/models', '/health/live', '*', '/v1/adapters/x']);
    return { parts: [request({ method, target, auth: chance(0.5) ? KEY : null, body: chance(0.3) ? '{}' : undefined })], requests: 1, keyed: false, open: isOpen(target), followUp: true, what: `${JSON.stringify(method.slice(0, 12))} ${target}` };
  }],
  ['odd path', 6, () => {
    const target = pick([
      '/v1/../v1/models', '/health/../v1/models', '/health/live/../../v1/models', '/%2e%2e/v1/models', '/v1/%2e%2e/v1/models', '/health/%2e%2e/v1/models',
      '/v1/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd', '/v1/models/..%2F..%2Fetc%2Fpasswd', '//v1//models', '/V1/MODELS', '/v1/models/', '/health/live/', '/health//live',
      '/%76%31/models', '/v1/models%00', '/v1/models/%00', '/v1/models/%E0%A4%A', '/v1/models/%ff', '/v1/models?x=%zz', '/v1/models#frag', '/health/live?/v1/models',
      `/v1/models/${'m'.repeat(500)}`, `/${'a/'.repeat(2000)}`, `/v1/models?${'q'.repeat(8000)}`, `/${'x'.repeat(17_000)}`, 'http://127.0.0.1/v1/models', 'http://evil.example/health/live',
      '*', 'v1/models', '', '/docs/static/../../package.json', '/docs/static/%2e%2e/%2e%2e/package.json', '/docs/json?url=http://evil', '/health\\..\\v1\\models', '/v1/models/\u00e9', '/metrics/../v1/models', '/metrics%2f..%2fv1/models',
    ]);
    const keyed = chance(0.5);
    // a health route's own answer is open to all (isHealthAnswer tells it from anything a path trick could reach)
    return { parts: [request({ target, auth: keyed ? KEY : null })], requests: 1, keyed, open: target.includes('/health'), followUp: true, what: `GET ${JSON.stringify(target.slice(0, 60))}` };
  }],
  ['mutated JSON', 20, () => {
    const target = pick(POST_ROUTES);
    return { parts: [request({ target, auth: KEY, body: mutatedBody(target) })], requests: 1, keyed: true, followUp: true, timeoutMs: REQUEST_TIMEOUT_MS + 4000, what: `POST ${target}` };
  }],
  ['random bytes body', 3, () => {
    const target = pick(POST_ROUTES);
    const body = Buffer.from(Array.from({ length: 1 + int(400) }, () => int(256)));
    return { parts: [request({ target, auth: KEY, body })], requests: 1, keyed: true, followUp: true, what: `POST ${target}, ${body.length} bytes` };
  }],
  ['wrong content type', 4, () => {
    const target = pick(POST_ROUTES);
    const type = pick(['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/json; charset=latin1', 'APPLICATION/JSON', 'application/json-patch+json', 'application/jsonx', '', 'application/json, text/plain', '*/*', 'application/json; charset=utf-8; x="', null]);
    const headers: Array<[string, string]> = chance(0.2) ? [['Content-Type', 'text/plain']] : [];
    return { parts: [request({ target, auth: KEY, body: JSON.stringify(validBody(target)), type, headers })], requests: 1, keyed: true, followUp: true, what: `POST ${target} as ${JSON.stringify(type)}${headers.length ? ' and text/plain' : ''}` };
  }],
  ['Expect', 3, () => {
    const body = JSON.stringify(validBody('/tokenize'));
    const variant = pick<[string, Buffer, number[] | undefined]>([
      ['100-continue', request({ target: '/tokenize', auth: KEY, body, headers: [['Expect', '100-continue']] }), undefined],
      ['100-continue, 5 MB declared', request({ target: '/v1/completions', auth: KEY, body: '', length: String(5 * 2 ** 20), headers: [['Expect', '100-continue']] }), [413]],
      ['something else', request({ target: '/tokenize', auth: KEY, body, headers: [['Expect', pick(['200-ok', 'x', '100-continue, foo'])]] }), [417]],
      ['two of them', request({ target: '/tokenize', auth: KEY, body, headers: [['Expect', '100-continue'], ['Expect', '100-continue']] }), undefined],
      ['100-continue without the key', request({ target: '/v1/completions', body, headers: [['Expect', '100-continue']] }), [401]],
    ]);
    return { parts: [variant[1]], requests: 1, keyed: !variant[0].includes('without'), expect: variant[2], followUp: true, what: variant[0] };
  }],
  ['x-request-id', 4, () => {
    const r = wellFormed();
    const good = chance(0.5);
    const value = good
      ? pick(['abc', 'req-1', 'A.b_c:d-e', 'x'.repeat(128), `trace:${int(1e9)}`])
      : pick(['x'.repeat(129), 'has space', '<script>alert(1)</script>', '{"level":60}', 'caf\u00e9', '', 'a/b', 'id\u0000', 'x'.repeat(8000), '%0d%0aSet-Cookie:x']);
    const extra: Array<[string, string]> = chance(0.1) ? [['X-Request-Id', 'second']] : [];
    return { parts: [request({ ...r, auth: KEY, headers: [['X-Request-Id', value], ...extra] })], requests: 1, heads: [r.method === 'HEAD'], keyed: true, requestId: extra.length ? undefined : { value, good }, followUp: true, what: `${r.method} ${r.target} id ${JSON.stringify(value.slice(0, 20))}` };
  }],
  ['truncated', 3, () => {
    const target = pick(POST_ROUTES);
    const full = request({ target, auth: chance(0.8) ? KEY : null, body: JSON.stringify(validBody(target)) });
    const cut = full.subarray(0, 1 + int(full.length - 1));
    const end = pick(['fin', 'fin', 'reset'] as const);
    return { parts: [cut], requests: 1, keyed: true, end, noAnswerOk: `the client ${end === 'fin' ? 'closed' : 'reset'} mid-request`, what: `${cut.length} of ${full.length} bytes, then ${end}` };
  }],
  ['stalled', 1, () => {
    const variant = pick<[string, string]>([['nothing sent', ''], ['half a request line', 'GET /v1/mod'], ['headers not finished', `POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: ${KEY}\r\nContent-Le`]]);
    return {
      parts: variant[1] === '' ? [] : [variant[1]], requests: 1, keyed: true, expect: [408], timeoutMs: HEADERS_TIMEOUT_MS + 4000,
      // Node closes a connection that sent no byte at all when its headers time out, without an answer
      noAnswerOk: variant[1] === '' ? 'a connection that sent nothing timed out' : undefined, what: variant[0],
    };
  }],
  ['header syntax', 3, () => {
    const r = wellFormed();
    const raw = request({ ...r, auth: KEY }).toString('latin1');
    const variant = pick<[string, (s: string) => string]>([
      ['obs-fold', (s) => s.replace('\r\n\r\n', '\r\nX-Fold: a\r\n b\r\n\r\n')],
      ['a space before the colon', (s) => s.replace('Host:', 'Host :')],
      ['bare LF', (s) => s.replaceAll('\r\n', '\n')],
      ['NUL in a value', (s) => s.replace('\r\n\r\n', '\r\nX-Nul: a\u0000b\r\n\r\n')],
      ['CR in a value', (s) => s.replace('\r\n\r\n', '\r\nX-Cr: a\rb\r\n\r\n')],
      ['no name', (s) => s.replace('\r\n\r\n', '\r\n: x\r\n\r\n')],
      ['a name with ()', (s) => s.replace('\r\n\r\n', '\r\nX(y): 1\r\n\r\n')],
      ['a 10 KB name', (s) => s.replace('\r\n\r\n', `\r\n${'n'.repeat(10_000)}: 1\r\n\r\n`)],
      ['a line without colon', (s) => s.replace('\r\n\r\n', '\r\nnocolon\r\n\r\n')],
      ['Authorization folded', (s) => s.replace(`Authorization: ${KEY}`, `Authorization: Bearer\r\n ${API_KEY}`)],
      ['HTTP/1.2', (s) => s.replace('HTTP/1.1', 'HTTP/1.2')],
      ['HTTP/2.0', (s) => s.replace('HTTP/1.1', 'HTTP/2.0')],
      ['http/1.1', (s) => s.replace('HTTP/1.1', 'http/1.1')],
      ['HTTP/0.9', (s) => s.replace(' HTTP/1.1', '')],
      ['HTTP/2 preface', () => 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'],
    ]);
    return { parts: [Buffer.from(variant[1](raw), 'latin1')], requests: 1, heads: [r.method === 'HEAD'], keyed: variant[0] !== 'Authorization folded', open: isOpen(r.target), followUp: true, what: `${variant[0]}, ${r.method} ${r.target}` };
  }],
  ['pipelined', 2, () => {
    const count = 2 + int(3);
    const reqs = Array.from({ length: count }, () => wellFormed());
    const parts = reqs.map((r, k) => request({ ...r, auth: KEY, headers: [['X-Request-Id', `pipe-${k}`]] }));
    return { parts: [Buffer.concat(parts)], requests: count, heads: reqs.map((r) => r.method === 'HEAD'), keyed: true, followUp: true, what: reqs.map((r) => `${r.method} ${r.target}`).join(' + ') };
  }],
  ['a stream left mid-answer', 1, () => {
    const body = JSON.stringify({ model: MODEL, prompt: pick(PROMPTS), max_tokens: 64, stream: true, ignore_eos: true });
    return { parts: [request({ target: '/v1/completions', auth: KEY, body })], requests: 1, keyed: true, hangUp: true, noAnswerOk: 'the client hung up mid-answer', what: 'stream' };
  }],
];

const WEIGHT = GENERATORS.reduce((sum, [, w]) => sum + w, 0);
function nextCase(): Case {
  let roll = rnd() * WEIGHT;
  for (const [category, weight, make] of GENERATORS) {
    roll -= weight;
    if (roll < 0) return { category, ...make() };
  }
  return { category: GENERATORS[0]![0], ...GENERATORS[0]![2]() };
}

/** The loopback address of fuzz request i: 127.10.0.1 onwards, one per request. */
const fuzzAddress = (i: number) => `127.${10 + Math.floor(i / 62_500)}.${Math.floor(i / 250) % 250 + 1}.${(i % 250) + 1}`;

// ---------------------------------------------------------------------------------------------------------------
// The phases
// ---------------------------------------------------------------------------------------------------------------

/** One JSON request over a raw socket from `from`: its answer (or null). */
async function call(from: string, method: string, target: string, auth: string | null, body?: unknown): Promise<Answer | null> {
  const outcome = await exchange({ parts: [request({ method, target, auth, body: body === undefined ? undefined : JSON.stringify(body) })], requests: 1, timeoutMs: 30_000 }, from);
  return outcome.answers[0] ?? null;
}

const text = (answer: Answer | null) => (answer === null ? 'no answer' : `${answer.status} ${answer.body.toString('utf8').slice(0, 200)}`);

interface AdapterSummary { refused: number; messages: Set<string>; leaks: number; loaded: string[]; busy: number }

/** Adapter path tricks with the right admin token, from one address. */
async function adapterTricks(): Promise<AdapterSummary> {
  const from = '127.30.0.1';
  const admin = `Bearer ${ADMIN_TOKEN}`;
  const summary: AdapterSummary = { refused: 0, messages: new Set(), leaks: 0, loaded: [], busy: 0 };
  const refusedPaths = [
    `${root}/../outside/valid.safetensors`, `${root}/subfolder/../valid.safetensors`, `${root}/..`, '../../../../../../etc/passwd', `${root}/..\\outside\\valid.safetensors`,
    '/etc/passwd', '/etc/shadow', '/proc/self/environ', '/proc/self/cmdline', '/proc/self/mem', '/dev/zero', '/dev/stdin', '/dev/random', '/', '/root/.ssh/id_rsa', '/nonexistent/file.safetensors',
    `${root}/missing.safetensors`, `${root}/passwd.safetensors`, `${root}/escape.safetensors`, `${root}/outside-link`, `${root}/outside-link/valid.safetensors`,
    `${root}/fifo.safetensors`, `${root}/notes.txt`, `${root}/text.safetensors`, `${root}/huge-header.safetensors`, `${root}/oversized.safetensors`, `${root}/subfolder`, root,
    resolve(MODEL_DIR), `${root}/%2e%2e/outside/valid.safetensors`, `${root}%2f..%2foutside%2fvalid.safetensors`, '%2Fetc%2Fpasswd', 'file:///etc/passwd', `${root}/valid.safetensors\u0000`,
    `${root}/valid.safetensors/`, `${root}/${'a'.repeat(5000)}`, '~/.bashrc', 'models/default', 'models/default/manifest.json', `${root}/./valid.safetensors/..`, '.', '..',
  ];
  const mentions = ['root:', 'x:0', '/bin/bash', 'No file', 'no file', 'nothing at', 'not a .safetensors', 'neither', 'regular file', 'symbolic', 'header', HUGE_HEADER_LENGTH.toString(),
    String(65 * 2 ** 20), 'bytes', 'ENOENT', 'EACCES', 'ELOOP', 'ENAMETOOLONG', 'passwd', 'shadow', 'environ', 'outside', scratch, 'fifo', 'notes', 'lora_', 'tensor', 'PATH=', 'HOME='];
  const checkRefusal = (path: string, answer: Answer | null) => {
    if (answer === null) return violation(`adapter path ${JSON.stringify(path.slice(0, 80))}: no answer`);
    const body = answer.body.toString('utf8');
    for (const leak of [...mentions, path.length > 3 ? path : '\u0000never']) {
      if (body.includes(leak)) {
        summary.leaks++;
        violation(`adapter path ${JSON.stringify(path.slice(0, 80))}: the answer mentions ${JSON.stringify(leak.slice(0, 40))}: ${text(answer)}`);
      }
    }
    if (shapeProblem(answer) !== null) return violation(`adapter path ${JSON.stringify(path.slice(0, 80))}: not OpenAI's error shape: ${text(answer)}`);
    const error = errorOf(answer);
    if (answer.status !== 400 || error.code !== 'invalid_adapter' || error.param !== 'path') return violation(`adapter path ${JSON.stringify(path.slice(0, 80))}: ${text(answer)}, expected 400 invalid_adapter`);
    summary.refused++;
    summary.messages.add(error.message);
  };
  for (const [k, path] of refusedPaths.entries()) checkRefusal(path, await call(from, 'POST', '/v1/adapters', admin, { name: `trick-${k}`, path }));
  // concurrent loads of the traps: one reads, one waits, the rest are 429 adapter_busy (each in shape)
  const burst = await Promise.all([`${root}/fifo.safetensors`, `${root}/huge-header.safetensors`, '/dev/zero', `${root}/oversized.safetensors`, '/etc/passwd', `${root}/text.safetensors`]
    .map((path, k) => call(from, 'POST', '/v1/adapters', admin, { name: `burst-${k}`, path }).then((answer) => ({ path, answer }))));
  for (const { path, answer } of burst) {
    if (answer?.status === 429 && shapeProblem(answer) === null && errorOf(answer).code === 'adapter_busy' && header(answer, 'retry-after') !== undefined) summary.busy++;
    else checkRefusal(path, answer);
  }
  // the schema's refusals are another sentence, but still tell nothing
  for (const path of ['', ['/etc/passwd'], 7, { path: '/etc/passwd' }]) {
    const answer = await call(from, 'POST', '/v1/adapters', admin, { name: 'schema', path });
    if (answer === null || answer.status !== 400 || shapeProblem(answer) !== null || /root:|x:0/.test(answer.body.toString())) violation(`adapter path ${JSON.stringify(path)}: ${text(answer)}`);
  }
  // what must load: the valid file, and a link to it inside the folder; each serves a completion, then is unloaded
  for (const [name, path] of [['hostile-valid', `${root}/valid.safetensors`], ['hostile-alias', `${root}/alias.safetensors`], ['hostile-dot', `${root}/./valid.safetensors`]] as const) {
    const loaded = await call(from, 'POST', '/v1/adapters', admin, { name, path });
    if (loaded?.status !== 201) {
      violation(`adapter ${path}: ${text(loaded)}, expected 201`);
      continue;
    }
    summary.loaded.push(name);
    const completion = await call(from, 'POST', '/v1/completions', KEY, { model: name, prompt: 'The whale', max_tokens: 2 });
    if (completion?.status !== 200) violation(`a completion with adapter ${name}: ${text(completion)}`);
    const unloaded = await call(from, 'DELETE', `/v1/adapters/${name}`, admin);
    if (unloaded?.status !== 200) violation(`unloading ${name}: ${text(unloaded)}`);
  }
  // DELETE with tricks in the name: 404, and nothing of any file
  for (const name of ['..%2F..%2Fetc%2Fpasswd', '%2e%2e', 'library%3Asotu', '..', `${'x'.repeat(300)}`]) {
    const answer = await call(from, 'DELETE', `/v1/adapters/${name}`, admin);
    if (answer === null || answer.status < 400 || answer.status >= 500 || shapeProblem(answer) !== null || /root:|x:0/.test(answer.body.toString())) violation(`DELETE /v1/adapters/${name}: ${text(answer)}`);
  }
  if (summary.messages.size !== 1 || ![...summary.messages][0]!.startsWith(ADAPTER_FILE_REFUSED)) violation(`adapter refusals: ${summary.messages.size} distinct messages: ${JSON.stringify([...summary.messages])}`);
  return summary;
}

interface ThrottleSummary { failuresBefore429: number; retryAfter: string; rightToken: string; rightKey: string; fullQueue: string; health: string }

/** Wrong admin tokens from one address until the throttle engages; then what that address still gets. */
async function bruteForce(): Promise<ThrottleSummary> {
  const from = '127.20.0.1';
  const body = { name: 'brute', examples: ['Hello there.'] };
  let failures = 0;
  let first429: Answer | null = null;
  for (let k = 0; k < 40 && first429 === null; k++) {
    const token = k % 5 === 4 ? API_KEY : randomBytesSeeded(pick([43, 44, 10, 200, 32]));
    const answer = await call(from, 'POST', '/v1/adapters', `Bearer ${token}`, body);
    if (answer?.status === 401) failures++;
    else if (answer?.status === 429) first429 = answer;
    else violation(`brute force, wrong token ${k + 1}: ${text(answer)}`);
  }
  const summary: ThrottleSummary = { failuresBefore429: failures, retryAfter: 'none', rightToken: '', rightKey: '', fullQueue: '', health: '' };
  if (first429 === null || shapeProblem(first429) !== null || errorOf(first429).code !== 'too_many_auth_failures') {
    violation(`brute force: the throttle did not engage after ${failures} failures: ${text(first429)}`);
    return summary;
  }
  if (failures !== 10) violation(`brute force: the throttle engaged after ${failures} failures, not 10`);
  summary.retryAfter = header(first429, 'retry-after') ?? 'none';
  if (!(Number(summary.retryAfter) >= 1 && Number(summary.retryAfter) <= 60)) violation(`brute force: Retry-After ${summary.retryAfter}`);
  const throttled = (what: string, answer: Answer | null): string => {
    const ok = answer?.status === 429 && shapeProblem(answer) === null && errorOf(answer).code === 'too_many_auth_failures' && header(answer, 'retry-after') !== undefined;
    if (!ok) violation(`brute force: ${what} while throttled: ${text(answer)}, expected 429 too_many_auth_failures`);
    return answer === null ? 'no answer' : `${answer.status} ${ok ? 'too_many_auth_failures' : text(answer)}`;
  };
  summary.rightToken = throttled('the right admin token', await call(from, 'POST', '/v1/adapters', `Bearer ${ADMIN_TOKEN}`, body));
  summary.rightKey = throttled('the right API key', await call(from, 'GET', '/v1/models', KEY));
  const wrong = await call(from, 'GET', '/v1/models', `Bearer ${randomBytesSeeded(43)}`);
  throttled('a wrong key', wrong);
  // the same answer whether the credential is right or wrong: nothing to learn while throttled
  const again = await call(from, 'GET', '/v1/models', KEY);
  if (again !== null && wrong !== null && errorOf(again).message.replace(/\d+/g, 'N') !== errorOf(wrong).message.replace(/\d+/g, 'N')) violation('brute force: the right and a wrong key get different answers while throttled');

  // on a full queue too (completions are refused before fastify there): fill it from another address
  const filler = '127.20.0.2';
  const fill = Array.from({ length: 4 }, (_, k) => call(filler, 'POST', '/v1/completions', KEY, {
    model: MODEL, prompt: Array.from({ length: MAX_BATCH_SIZE }, (_, j) => `filler ${k} ${j}`), max_tokens: 200, ignore_eos: true, temperature: 0,
  }));
  let full = false;
  for (let k = 0; k < 100 && !full; k++) {
    const probe = await call(filler, 'POST', '/v1/completions', KEY, { model: MODEL, prompt: 'probe', max_tokens: 1 });
    full = probe?.status === 429 && errorOf(probe).code === 'queue_full';
    if (!full) await sleep(10);
  }
  if (!full) violation('brute force: the queue did not fill, so the throttle was not checked on a full queue');
  else {
    const right = await call(from, 'POST', '/v1/completions', KEY, { model: MODEL, prompt: 'a', max_tokens: 1 });
    const wrongOnFull = await call(from, 'POST', '/v1/completions', `Bearer ${randomBytesSeeded(43)}`, { model: MODEL, prompt: 'a', max_tokens: 1 });
    summary.fullQueue = `right key ${throttled('the right API key on a full queue', right)}, wrong key ${throttled('a wrong key on a full queue', wrongOnFull)}`;
  }
  for (const answer of await Promise.all(fill)) {
    if (answer === null || (answer.status !== 200 && !(answer.status === 504 && errorOf(answer).code === 'timeout') && !(answer.status === 429 && errorOf(answer).code === 'queue_full'))) violation(`a filler completion: ${text(answer)}`);
  }
  const health = await Promise.all(['/health', '/health/live', '/health/ready'].map((path) => call(from, 'GET', path, null)));
  summary.health = health.map((a) => a?.status ?? 'no answer').join(' ');
  if (health.some((a) => a?.status !== 200)) violation(`brute force: the health routes while throttled: ${summary.health}`);
  return summary;
}

async function fuzz(): Promise<number> {
  const cases = Array.from({ length: REQUESTS }, () => nextCase());
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < cases.length) {
      const i = next++;
      record(cases[i]!, await exchange(cases[i]!, fuzzAddress(i)));
    }
  }));
  return (performance.now() - started) / 1000;
}

// ---------------------------------------------------------------------------------------------------------------

const runStarted = performance.now();
let exitCode = 1;
try {
  await waitReady();
  const warm = await call('127.0.0.1', 'POST', '/v1/completions', KEY, { model: MODEL, prompt: 'The whale', max_tokens: 4 });
  if (warm?.status !== 200) throw new Error(`a first completion failed: ${text(warm)}`);
  const rssBefore = rssMiB();
  console.log(`hostile run: seed ${SEED}, server pid ${server.pid} on ${BASE}, ${REQUESTS} fuzz requests at ${CONCURRENCY} at once`);

  const adapters = await adapterTricks();
  const fuzzSeconds = await fuzz();
  const throttle = await bruteForce();

  const rssAfter = rssMiB();
  const alive = server.exitCode === null;
  const live = await call('127.0.0.1', 'GET', '/health/live', null);
  const completion = await call('127.0.0.1', 'POST', '/v1/completions', KEY, { model: MODEL, prompt: 'The whale', max_tokens: 8, temperature: 0 });
  const completed = completion?.status === 200 && typeof (JSON.parse(completion.body.toString()) as { choices?: Array<{ text?: unknown }> }).choices?.[0]?.text === 'string';
  if (!alive || live?.status !== 200) violation(`the server at the end: alive ${alive}, /health/live ${text(live)}`);
  if (!completed) violation(`a completion at the end: ${text(completion)}`);
  server.kill('SIGTERM');
  const exit = await serverExit;
  if (exit !== 0) violation(`the server exited with ${exit} after SIGTERM`);

  // the log: no secret, no error line
  const log = readFileSync(logPath, 'utf8');
  if (log.includes(API_KEY) || log.includes(ADMIN_TOKEN)) violation('a secret in the server log');
  const errorLines = log.split('\n').filter((line) => /"level":(50|60)/.test(line) || (line !== '' && !line.startsWith('{')));
  for (const line of errorLines.slice(0, 5)) violation(`server log: ${line.slice(0, 300)}`);
  const throttleLogged = log.includes('too many failed authentications');
  if (!throttleLogged) violation('the throttle was not logged');

  // the summary
  const rows = [...tally].sort((a, b) => b[1].sent - a[1].sent);
  const statusText = (m: Map<number, number>) => [...m].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${s}:${n}`).join(' ');
  const all = new Map<number, number>();
  for (const [, t] of rows) for (const [s, n] of t.statuses) all.set(s, (all.get(s) ?? 0) + n);
  const width = Math.max(...rows.map(([c]) => c.length));
  console.log(`\nfuzz: ${REQUESTS} requests in ${fuzzSeconds.toFixed(1)} s (+${followUps} follow-ups on the same connection), each from its own 127.x.y.z address`);
  console.log(`${'category'.padEnd(width)}  sent  no answer  statuses`);
  for (const [category, t] of rows) console.log(`${category.padEnd(width)}  ${String(t.sent).padStart(4)}  ${String(t.noAnswer).padStart(9)}  ${statusText(t.statuses)}`);
  console.log(`${'all'.padEnd(width)}  ${String(REQUESTS).padStart(4)}  ${String(rows.reduce((s, [, t]) => s + t.noAnswer, 0)).padStart(9)}  ${statusText(all)}`);
  console.log(`non-2xx answers checked for OpenAI's error shape: ${shapeChecked}; 504 timeout (documented): ${documented504}; answers without x-request-id (refused by Node's parser): ${withoutRequestId}`);
  console.log(`closed without an answer, as documented: ${[...closesWithoutAnswer].map(([why, n]) => `${why} ${n}`).join('; ') || 'none'}`);
  console.log(`adapter paths: ${adapters.refused} refused, ${adapters.messages.size} distinct message(s), ${adapters.busy} x 429 adapter_busy in a burst of 6, ${adapters.leaks} leaks; loaded and served: ${adapters.loaded.join(', ')}`);
  console.log(`admin brute force from one address: ${throttle.failuresBefore429} x 401, then 429 too_many_auth_failures (Retry-After ${throttle.retryAfter}); right admin token ${throttle.rightToken}; right API key ${throttle.rightKey}; full queue: ${throttle.fullQueue}; health routes ${throttle.health}`);
  console.log(`server: RSS ${rssBefore.toFixed(1)} MiB before, ${rssAfter.toFixed(1)} MiB after; alive ${alive}; /health/live ${live?.status}; completion ${completion?.status}; exit ${exit} after SIGTERM; log: ${errorLines.length} error lines, throttle logged ${throttleLogged}`);
  console.log(`run time ${((performance.now() - runStarted) / 1000).toFixed(1)} s; violations: ${violations.length}`);
  for (const v of violations.slice(0, 20)) console.log(`  - ${v}`);
  if (violations.length > 20) console.log(`  ... and ${violations.length - 20} more`);
  exitCode = violations.length === 0 ? 0 : 1;
} catch (error) {
  console.error(`hostile run failed: ${(error as Error).stack ?? String(error)}`);
  for (const v of violations.slice(0, 20)) console.error(`  - ${v}`);
} finally {
  if (server.exitCode === null) {
    server.kill('SIGTERM');
    await serverExit;
  }
  closeSync(logFd);
  if (exitCode === 0) rmSync(scratch, { recursive: true, force: true });
  else console.log(`kept for a look: ${scratch} (server.log)`);
}
process.exit(exitCode);
