/**
 * Named adapters, the library and mask baselines, and adaptation_scale, through HTTP on the real default package:
 * every way to make or choose an adapter is checked against the mode that must give exactly the same update; and
 * what an admin can make the server read through `path` (only files under ADAPTER_DIRS) and learn of it (nothing).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { ADAPTER_FILE_REFUSED } from '../../src/adaptation/adapter-files.js';
import { ModelPackage } from '../../src/model/package.js';
import { complete, MODEL, MODEL_DIR, startApp } from '../helpers/app.js';
import { LICENSE, SEA } from '../helpers/prompts.js';

const TOKEN = 'test-admin-token';
const pkg = ModelPackage.open(MODEL_DIR);
const domains = pkg.manifest.library?.names ?? [];
let app: FastifyInstance;
let url: string;
let scratch: string;
/** ADAPTER_DIRS of the app: the only folder adapter files load from. */
let root: string;
/** A folder beside it, which must stay out of reach. */
let outside: string;
/** The app's log lines (pino JSON). */
const logLines: string[] = [];

before(async () => {
  scratch = mkdtempSync(join(tmpdir(), 'adapters-'));
  root = join(scratch, 'allowed');
  outside = join(scratch, 'outside');
  mkdirSync(root);
  mkdirSync(outside);
  // Windows never wait: each request below is served alone, so its cluster is itself and results are comparable.
  app = await startApp(
    { adminToken: TOKEN, maxAdapters: 3, maxWaitMs: 0, idleDispatch: true, clusterInFlight: false, adapterDirs: [root], logLevel: 'info' },
    { logger: { level: 'info', stream: { write: (line: string) => { logLines.push(line); } } } },
  );
  await app.listen({ host: '127.0.0.1', port: 0 });
  url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});
after(async () => {
  await app.close();
  rmSync(scratch, { recursive: true, force: true });
});

const auth = { authorization: `Bearer ${TOKEN}` };

/** POST /v1/adapters over real HTTP; a load that hangs fails the test instead of the run. */
async function post(payload: unknown, headers: Record<string, string> = auth) {
  const res = await fetch(`${url}/v1/adapters`, {
    method: 'POST', body: JSON.stringify(payload), headers: { 'content-type': 'application/json', ...headers }, signal: AbortSignal.timeout(30_000),
  });
  return { status: res.status, body: (await res.json()) as any, headers: Object.fromEntries(res.headers) };
}

async function remove(name: string, headers: Record<string, string> = auth) {
  const res = await fetch(`${url}/v1/adapters/${encodeURIComponent(name)}`, { method: 'DELETE', headers, signal: AbortSignal.timeout(30_000) });
  return { status: res.status, body: (await res.json()) as any };
}

/** The one answer to every refused adapter path: whatever is (or is not) there, nothing of it is told. */
const REFUSED = { error: { message: ADAPTER_FILE_REFUSED, type: 'invalid_request_error', param: 'path', code: 'invalid_adapter' } };

async function assertRefused(path: string, name = 'refused'): Promise<void> {
  const res = await post({ name, path });
  if (res.status === 201) await remove(name); // so that one wrong answer does not fail the tests after it
  assert.equal(res.status, 400, `${path}: ${JSON.stringify(res.body)}`);
  assert.deepEqual(res.body, REFUSED, path);
}

/** The log lines with this message. */
const logged = (msg: string) => logLines.map((line) => JSON.parse(line)).filter((entry) => entry.msg === msg);

/** The prompt's token logprobs (echo, nothing generated) under the given request fields. */
async function scored(prompt: string, fields: Record<string, unknown>): Promise<{ logprobs: number[]; chameleon: any; model: string }> {
  const res = await complete(app, { prompt, max_tokens: 0, echo: true, logprobs: 0, ...fields });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return { logprobs: res.body.choices[0].logprobs.token_logprobs.slice(1), chameleon: res.body.chameleon, model: res.body.model };
}

function maxAbsDiff(a: number[], b: number[]): number {
  assert.equal(a.length, b.length);
  return Math.max(...a.map((x, i) => Math.abs(x - b[i])));
}

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

/** The package's static LoRA as a PEFT-named .safetensors file: a valid adapter wherever it is put. */
function staticLora(path: string): void {
  const rank = pkg.manifest.lora!.rank;
  safetensors(path, {
    'base_model.model.lm_head.lora_A.weight': { shape: [rank, pkg.dims.d_model], data: pkg.readTensor('static_lora_a') },
    'base_model.model.lm_head.lora_B.weight': { shape: [pkg.dims.vocab_size, rank], data: pkg.readTensor('static_lora_b') },
  });
}

describe('named adapters', () => {
  test('GET /v1/models lists the base model and the package library, each adapter with parent = the base', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/models' });
    const ids = res.json().data.map((m: { id: string }) => m.id);
    const modes = app.chameleon.service.adaptationModes.map((mode) => `${MODEL}:${mode}`);
    assert.deepEqual(ids, [MODEL, ...modes, ...domains.map((d) => `library:${d}`)]);
    for (const m of res.json().data.slice(1)) assert.equal(m.parent, MODEL);
    assert.equal(res.json().data[0].parent, null);
    assert.ok(domains.length >= 2, 'the default package ships a LoRA library');
  });

  test('a library adapter chosen by model serves its LoRA; the library mode picks the entry nearest the prompt', async () => {
    const prompt = SEA[0];
    const byName = await Promise.all(domains.map((d) => scored(prompt, { model: `library:${d}` })));
    for (const r of byName) assert.equal(r.chameleon.mode, 'adapter');
    assert.ok(maxAbsDiff(byName[0].logprobs, byName[1].logprobs) > 1e-3, 'different library entries give different outputs');
    const picked = await scored(prompt, { adaptation: 'library' });
    assert.equal(picked.chameleon.mode, 'library');
    assert.equal(picked.chameleon.cluster_size, 1);
    const same = byName.filter((r) => maxAbsDiff(r.logprobs, picked.logprobs) < 1e-4);
    assert.equal(same.length, 1, 'library mode serves exactly one library entry');
  });

  test('the weighted library and LoRA*Mask are served as modes, each its own update', async () => {
    const prompt = LICENSE[0];
    const weighted = await scored(prompt, { adaptation: 'library_weighted' });
    const masks = await scored(prompt, { adaptation: 'masks' });
    const none = await scored(prompt, { adaptation: 'none' });
    assert.equal(weighted.chameleon.mode, 'library_weighted');
    assert.equal(masks.chameleon.mode, 'masks');
    assert.ok(maxAbsDiff(weighted.logprobs, none.logprobs) > 1e-3);
    assert.ok(maxAbsDiff(masks.logprobs, none.logprobs) > 1e-3);
    assert.ok(maxAbsDiff(masks.logprobs, weighted.logprobs) > 1e-3);
  });

  test('an adapter made from one example is the hypernetwork on that text, as request mode computes it', async () => {
    const prompt = SEA[1];
    const made = await post({ name: 'from-one-example', examples: [prompt] });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    assert.equal(made.body.source, 'examples');
    assert.equal(made.body.examples, 1);
    assert.equal(made.body.rank, pkg.manifest.hypernet!.rank);
    const viaName = await scored(prompt, { model: 'from-one-example' });
    const viaRequest = await scored(prompt, { adaptation: 'request' });
    assert.ok(maxAbsDiff(viaName.logprobs, viaRequest.logprobs) < 1e-4);
    assert.equal(viaName.chameleon.adapter, 'from-one-example');
    assert.equal(viaName.model, 'from-one-example', 'the response names the model that was asked for');
    assert.equal((await remove('from-one-example')).status, 200);
  });

  test('a PEFT folder is scaled by lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora', async () => {
    const rank = pkg.manifest.lora!.rank;
    const folder = join(root, 'peft');
    mkdirSync(folder, { recursive: true });
    staticLora(join(folder, 'adapter_model.safetensors'));
    const prompt = SEA[4];
    for (const [config, scale] of [[{ r: rank, lora_alpha: rank / 2 }, 0.5], [{ r: rank, lora_alpha: Math.sqrt(rank), use_rslora: true }, 1]] as const) {
      writeFileSync(join(folder, 'adapter_config.json'), JSON.stringify(config));
      assert.equal((await post({ name: 'peft', path: folder })).status, 201);
      const viaName = await scored(prompt, { model: 'peft' });
      const viaScale = await scored(prompt, { adaptation: 'static', adaptation_scale: scale });
      assert.ok(maxAbsDiff(viaName.logprobs, viaScale.logprobs) < 1e-4, JSON.stringify(config));
      assert.equal((await remove('peft')).status, 200);
    }
    writeFileSync(join(folder, 'adapter_config.json'), JSON.stringify({ r: '4', lora_alpha: '8' }));
    await assertRefused(folder, 'peft');
  });

  test('a .safetensors LoRA loads and serves exactly its update (here the static LoRA, so: as adaptation static)', async () => {
    const file = join(root, 'static.safetensors');
    staticLora(file);
    const loaded = await post({ name: 'static-copy', path: file });
    assert.equal(loaded.status, 201, JSON.stringify(loaded.body));
    assert.equal(loaded.body.source, 'file');
    const line = logged('adapter loaded').find((entry) => entry.adapter === 'static-copy');
    assert.equal(line?.path, file, 'the log names the file an adapter came from');
    const prompt = LICENSE[2];
    const viaName = await scored(prompt, { model: 'static-copy' });
    const viaMode = await scored(prompt, { adaptation: 'static' });
    assert.ok(maxAbsDiff(viaName.logprobs, viaMode.logprobs) < 1e-4);
    const models = (await app.inject({ method: 'GET', url: '/v1/models/static-copy' })).json();
    assert.equal(models.parent, MODEL);
    assert.equal((await remove('static-copy')).status, 200);
    const gone = await complete(app, { model: 'static-copy', prompt, max_tokens: 1 });
    assert.equal(gone.status, 404);
    assert.equal(gone.body.error.code, 'model_not_found');
  });

  test('bad input: any bad adapter file 400 in one sentence, unknown adapter 404, taken name and over the cap 409, adapter with a mode 400', async () => {
    const wrong = join(root, 'wrong.safetensors');
    safetensors(wrong, { lora_a: { shape: [2, 7], data: new Float32Array(14) }, lora_b: { shape: [9, 2], data: new Float32Array(18) } });
    await assertRefused(wrong);
    assert.ok(logged('adapter file refused').some((entry) => entry.path === wrong && /lora_A \[2, 7\]/.test(entry.reason)), 'the log says why');
    const garbage = join(root, 'garbage.safetensors');
    writeFileSync(garbage, 'not a safetensors file at all');
    await assertRefused(garbage);
    await assertRefused(join(root, 'nothing-here'));
    assert.equal((await post({ name: 'no-fields' })).status, 400);
    const both = await post({ name: 'both', path: wrong, examples: ['x'] });
    assert.equal(both.status, 400);
    const empty = await post({ name: 'empty', examples: [] });
    assert.equal(empty.body.error.param, 'examples');

    // never read a device or a folder as a file; never take factors that overflow the logits
    symlinkSync('/dev/zero', join(root, 'zero.safetensors'));
    mkdirSync(join(root, 'peft-dir', 'adapter_model.safetensors'), { recursive: true });
    for (const path of ['zero.safetensors', 'peft-dir'].map((f) => join(root, f))) await assertRefused(path);
    const rank = pkg.manifest.lora!.rank;
    const huge = join(root, 'huge.safetensors');
    safetensors(huge, {
      lora_a: { shape: [rank, pkg.dims.d_model], data: new Float32Array(rank * pkg.dims.d_model).fill(3e38) },
      lora_b: { shape: [pkg.dims.vocab_size, rank], data: new Float32Array(pkg.dims.vocab_size * rank).fill(3e38) },
    });
    await assertRefused(huge);
    assert.ok(logged('adapter file refused').some((entry) => entry.path === huge && /magnitude/.test(entry.reason)));
    assert.equal((await post({ name: 'bad name!', examples: ['x'] })).status, 400);

    const unknown = await complete(app, { model: 'no-such-adapter', prompt: 'Hello', max_tokens: 1 });
    assert.equal(unknown.status, 404);
    assert.equal((await remove('no-such-adapter')).status, 404);

    for (const name of ['a1', 'a2', 'a3']) assert.equal((await post({ name, examples: [SEA[2], SEA[3]] })).status, 201);
    const taken = await post({ name: 'a1', examples: [SEA[2]] });
    assert.equal(taken.status, 409);
    assert.equal(taken.body.error.code, 'adapter_exists');
    const full = await post({ name: 'a4', examples: [SEA[2]] });
    assert.equal(full.status, 409);
    assert.equal(full.body.error.code, 'adapter_limit');

    const mixed = await complete(app, { model: 'a1', prompt: 'Hello', max_tokens: 1, adaptation: 'batch' });
    assert.equal(mixed.status, 400);
    assert.equal(mixed.body.error.param, 'adaptation');
    for (const name of ['a1', 'a2', 'a3']) assert.equal((await remove(name)).status, 200);
  });

  test('admin routes: missing or wrong token 401 with WWW-Authenticate; listing needs none', async () => {
    const missing = await post({ name: 'x', examples: ['y'] }, {});
    assert.equal(missing.status, 401);
    assert.equal(missing.body.error.code, 'unauthorized');
    assert.equal(missing.headers['www-authenticate'], 'Bearer');
    assert.equal((await post({ name: 'x', examples: ['y'] }, { authorization: 'Bearer nope' })).status, 401);
    assert.equal((await remove(`library:${domains[0]}`, { authorization: 'Basic abc' })).status, 401);
    const list = await app.inject({ method: 'GET', url: '/v1/adapters' });
    assert.equal(list.statusCode, 200);
    assert.equal(list.json().data.length, domains.length);
  });
});

describe('adapter files: only from under ADAPTER_DIRS, and nothing of them told', () => {
  test('a path outside ADAPTER_DIRS is refused, though it holds a valid adapter; the same file inside loads', async () => {
    staticLora(join(outside, 'valid.safetensors'));
    staticLora(join(root, 'valid.safetensors'));
    await assertRefused(join(outside, 'valid.safetensors'));
    await assertRefused('/etc/passwd');
    await assertRefused(MODEL_DIR);
    assert.equal((await post({ name: 'valid', path: join(root, 'valid.safetensors') })).status, 201);
    assert.equal((await remove('valid')).status, 200);
  });

  test('a link out of ADAPTER_DIRS is refused, to a file or to a folder; a link that stays inside is followed', async () => {
    staticLora(join(outside, 'target.safetensors'));
    mkdirSync(join(outside, 'peft-target'));
    staticLora(join(outside, 'peft-target', 'adapter_model.safetensors'));
    symlinkSync(join(outside, 'target.safetensors'), join(root, 'escape.safetensors'));
    symlinkSync(join(outside, 'peft-target'), join(root, 'escape-folder'));
    await assertRefused(join(root, 'escape.safetensors'));
    await assertRefused(join(root, 'escape-folder'));
    staticLora(join(root, 'target.safetensors'));
    symlinkSync(join(root, 'target.safetensors'), join(root, 'alias.safetensors'));
    assert.equal((await post({ name: 'alias', path: join(root, 'alias.safetensors') })).status, 201);
    assert.equal((await remove('alias')).status, 200);
  });

  test('a path with a .. segment is refused, even one that would stay inside', async () => {
    mkdirSync(join(root, 'sub'));
    staticLora(join(root, 'dots.safetensors'));
    await assertRefused(`${root}/sub/../dots.safetensors`);
    await assertRefused(`${root}/../outside/valid.safetensors`);
    assert.ok(logged('adapter file refused').some((entry) => /\.\. segment/.test(entry.reason)));
  });

  test('a FIFO inside ADAPTER_DIRS is refused at once, never waited on, and loads go on', async () => {
    const fifo = join(root, 'fifo.safetensors');
    execFileSync('mkfifo', [fifo]);
    const started = Date.now();
    await assertRefused(fifo);
    assert.ok(Date.now() - started < 10_000);
    assert.equal((await post({ name: 'after-fifo', path: join(root, 'valid.safetensors') })).status, 201);
    assert.equal((await remove('after-fifo')).status, 200);
  });

  test('a folder inside ADAPTER_DIRS whose adapter file is a link is refused (links are followed at the path only)', async () => {
    const folder = join(root, 'peft-linked');
    mkdirSync(folder);
    symlinkSync(join(outside, 'target.safetensors'), join(folder, 'adapter_model.safetensors'));
    await assertRefused(folder);
    assert.ok(logged('adapter file refused').some((entry) => /symbolic link/.test(entry.reason)));
  });

  test('a refusal tells nothing of the file: not its bytes, the header length they make, nor its tensor names', async () => {
    const text = 'root:x:0:0:root:/root:/bin/bash\n';
    const passwd = join(root, 'passwd.safetensors');
    writeFileSync(passwd, text.repeat(4));
    const headerLength = Buffer.from(text).readBigUInt64LE(0).toString();
    const named = join(root, 'named.safetensors');
    safetensors(named, { 'secret.tensor.name': { shape: [1], data: new Float32Array(1) } });
    for (const path of [passwd, named]) {
      const res = await post({ name: 'leak', path });
      const raw = JSON.stringify(res.body);
      for (const leak of ['root', 'ot:x:0', headerLength, 'secret.tensor', 'passwd', 'named']) assert.ok(!raw.includes(leak), `${leak} in ${raw}`);
      assert.deepEqual(res.body, REFUSED);
    }
    assert.ok(logged('adapter file refused').some((entry) => entry.path === named && /secret\.tensor\.name/.test(entry.reason)), 'the log keeps the details');
  });

  test('8 concurrent loads of 60 MB files with bad headers are each answered in shape, without reading the files', async () => {
    const text = join(root, 'big-text.safetensors');
    writeFileSync(text, 'root:x:0:0:root:/root:/bin/bash\n');
    truncateSync(text, 60_000_000);
    // a valid header holding no LoRA pair, before 60 MB of one tensor
    const tensor = join(root, 'big-tensor.safetensors');
    const json = Buffer.from(JSON.stringify({ other: { dtype: 'F32', shape: [15_000_000], data_offsets: [0, 60_000_000] } }));
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(json.length));
    writeFileSync(tensor, Buffer.concat([length, json]));
    truncateSync(tensor, 8 + json.length + 60_000_000);
    const rss = process.memoryUsage().rss;
    const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => post({ name: `big-${i}`, path: i % 2 === 0 ? text : tensor })));
    for (const answer of answers) {
      if (answer.status === 429) {
        assert.equal(answer.body.error.code, 'adapter_busy');
        assert.equal(answer.body.error.type, 'rate_limit_error');
        assert.equal(answer.headers['retry-after'], '1');
      } else {
        assert.deepEqual(answer.body, REFUSED);
      }
    }
    assert.ok(answers.some((a) => a.status === 400));
    const grown = process.memoryUsage().rss - rss;
    assert.ok(grown < 100 * 2 ** 20, `RSS grew by ${Math.round(grown / 2 ** 20)} MiB`);
  });

  test('package adapters are read-only: DELETE is 409 and the adapter is still listed and served, unchanged', async () => {
    const name = `library:${domains[0]}`;
    const before = await scored(SEA[5], { model: name });
    const res = await remove(name);
    assert.equal(res.status, 409);
    assert.deepEqual(res.body, { error: { message: res.body.error.message, type: 'invalid_request_error', param: 'name', code: 'adapter_read_only' } });
    const listed = (await app.inject({ method: 'GET', url: '/v1/adapters' })).json().data;
    assert.ok(listed.some((a: { id: string; source: string }) => a.id === name && a.source === 'package'));
    const after = await scored(SEA[5], { model: name });
    assert.equal(maxAbsDiff(before.logprobs, after.logprobs), 0);
  });

  test('the package adapters\' prefix and the base model\'s are reserved: nothing is made or loaded under them', async () => {
    const listed = async () => (await app.inject({ method: 'GET', url: '/v1/adapters' })).json().data;
    const before = await listed();
    for (const name of [`library:${domains[0]}`, 'library:mine', `${MODEL}:mine`]) {
      for (const payload of [{ name, examples: [SEA[2]] }, { name, path: join(root, 'valid.safetensors') }]) {
        const res = await post(payload);
        assert.equal(res.status, 409, `${JSON.stringify(payload)}: ${JSON.stringify(res.body)}`);
        assert.equal(res.body.error.code, 'adapter_name_reserved');
        assert.equal(res.body.error.param, 'name');
      }
    }
    assert.deepEqual(await listed(), before);
  });
});

describe('loading by path without ADAPTER_DIRS', () => {
  test('is off: 403 naming ADAPTER_DIRS, whatever the path', async () => {
    const off = await startApp({ adminToken: TOKEN, maxWaitMs: 0 });
    await off.listen({ host: '127.0.0.1', port: 0 });
    try {
      for (const path of [MODEL_DIR, join(root, 'valid.safetensors'), '/etc/passwd']) {
        const res = await fetch(`http://127.0.0.1:${(off.server.address() as AddressInfo).port}/v1/adapters`, {
          method: 'POST', body: JSON.stringify({ name: 'off', path }), headers: { 'content-type': 'application/json', ...auth },
        });
        const body = (await res.json()) as any;
        assert.equal(res.status, 403, JSON.stringify(body));
        assert.equal(body.error.code, 'adapter_files_disabled');
        assert.equal(body.error.type, 'permission_error');
        assert.match(body.error.message, /not enabled.*ADAPTER_DIRS/);
      }
    } finally {
      await off.close();
    }
  });
});

describe('adaptation_scale', () => {
  test('scales the row\'s update only: 0 is the base model, 1 the default, in one decoder run with other rows', async () => {
    const prompt = LICENSE[3];
    const [zero, one, two, none, plain] = await Promise.all([
      scored(prompt, { adaptation: 'static', adaptation_scale: 0 }),
      scored(prompt, { adaptation: 'static', adaptation_scale: 1 }),
      scored(prompt, { adaptation: 'static', adaptation_scale: 2 }),
      scored(prompt, { adaptation: 'none' }),
      scored(prompt, { adaptation: 'static' }),
    ]);
    assert.ok(maxAbsDiff(zero.logprobs, none.logprobs) < 1e-4);
    assert.ok(maxAbsDiff(one.logprobs, plain.logprobs) < 1e-4);
    assert.ok(maxAbsDiff(two.logprobs, one.logprobs) > 1e-3);
    assert.equal(two.chameleon.adaptation_scale, 2);
    const out = await complete(app, { prompt, max_tokens: 1, adaptation_scale: 2.5 });
    assert.equal(out.status, 400);
  });
});

describe('admin routes disabled', () => {
  test('without ADMIN_TOKEN, loading and unloading answer 403', async () => {
    const closed = await startApp({ maxWaitMs: 0 });
    try {
      const res = await closed.inject({ method: 'POST', url: '/v1/adapters', payload: { name: 'x', examples: ['y'] }, headers: auth });
      assert.equal(res.statusCode, 403);
      assert.equal(res.json().error.code, 'admin_disabled');
      assert.equal((await closed.inject({ method: 'DELETE', url: '/v1/adapters/x', headers: auth })).statusCode, 403);
    } finally {
      await closed.close();
    }
  });
});
