/**
 * Named adapters, the library and mask baselines, and adaptation_scale, through HTTP on the real default package:
 * every way to make or choose an adapter is checked against the mode that must give exactly the same update.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { ModelPackage } from '../../src/model/package.js';
import { complete, MODEL, MODEL_DIR, startApp } from '../helpers/app.js';
import { LICENSE, SEA } from '../helpers/prompts.js';

const TOKEN = 'test-admin-token';
const pkg = ModelPackage.open(MODEL_DIR);
const domains = pkg.manifest.library?.names ?? [];
let app: FastifyInstance;
let scratch: string;

before(async () => {
  // Windows never wait: each request below is served alone, so its cluster is itself and results are comparable.
  app = await startApp({ adminToken: TOKEN, maxAdapters: 3, maxWaitMs: 0, idleDispatch: true, clusterInFlight: false });
  scratch = mkdtempSync(join(tmpdir(), 'adapters-'));
});
after(async () => {
  await app.close();
  rmSync(scratch, { recursive: true, force: true });
});

const auth = { authorization: `Bearer ${TOKEN}` };

async function post(payload: unknown, headers: Record<string, string> = auth) {
  const res = await app.inject({ method: 'POST', url: '/v1/adapters', payload: payload as object, headers });
  return { status: res.statusCode, body: res.json(), headers: res.headers };
}

async function remove(name: string, headers: Record<string, string> = auth) {
  const res = await app.inject({ method: 'DELETE', url: `/v1/adapters/${encodeURIComponent(name)}`, headers });
  return { status: res.statusCode, body: res.json() };
}

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
    const folder = join(scratch, 'peft');
    mkdirSync(folder, { recursive: true });
    safetensors(join(folder, 'adapter_model.safetensors'), {
      'base_model.model.lm_head.lora_A.weight': { shape: [rank, pkg.dims.d_model], data: pkg.readTensor('static_lora_a') },
      'base_model.model.lm_head.lora_B.weight': { shape: [pkg.dims.vocab_size, rank], data: pkg.readTensor('static_lora_b') },
    });
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
    assert.equal((await post({ name: 'peft', path: folder })).body.error.code, 'invalid_adapter');
  });

  test('a .safetensors LoRA loads and serves exactly its update (here the static LoRA, so: as adaptation static)', async () => {
    const rank = pkg.manifest.lora!.rank;
    const file = join(scratch, 'static.safetensors');
    safetensors(file, {
      'base_model.model.lm_head.lora_A.weight': { shape: [rank, pkg.dims.d_model], data: pkg.readTensor('static_lora_a') },
      'base_model.model.lm_head.lora_B.weight': { shape: [pkg.dims.vocab_size, rank], data: pkg.readTensor('static_lora_b') },
    });
    const loaded = await post({ name: 'static-copy', path: file });
    assert.equal(loaded.status, 201, JSON.stringify(loaded.body));
    assert.equal(loaded.body.source, 'file');
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

  test('bad input: wrong shape 400, unknown adapter 404, taken name and over the cap 409, adapter with a mode 400', async () => {
    const wrong = join(scratch, 'wrong.safetensors');
    safetensors(wrong, { lora_a: { shape: [2, 7], data: new Float32Array(14) }, lora_b: { shape: [9, 2], data: new Float32Array(18) } });
    const bad = await post({ name: 'wrong', path: wrong });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.code, 'invalid_adapter');
    assert.match(bad.body.error.message, /lora_A \[r, \d+\] and lora_B \[\d+, r\]/);
    const garbage = join(scratch, 'garbage.safetensors');
    writeFileSync(garbage, 'not a safetensors file at all');
    assert.equal((await post({ name: 'garbage', path: garbage })).body.error.code, 'invalid_adapter');
    assert.equal((await post({ name: 'missing', path: join(scratch, 'nothing-here') })).status, 400);
    assert.equal((await post({ name: 'no-fields' })).status, 400);
    const both = await post({ name: 'both', path: wrong, examples: ['x'] });
    assert.equal(both.status, 400);
    const empty = await post({ name: 'empty', examples: [] });
    assert.equal(empty.body.error.param, 'examples');

    // never read a device, a FIFO or a folder as a file; never take factors that overflow the logits
    symlinkSync('/dev/zero', join(scratch, 'zero.safetensors'));
    execFileSync('mkfifo', [join(scratch, 'fifo.safetensors')]);
    mkdirSync(join(scratch, 'peft-dir', 'adapter_model.safetensors'), { recursive: true });
    for (const path of ['zero.safetensors', 'fifo.safetensors', 'peft-dir'].map((f) => join(scratch, f))) {
      const refused = await post({ name: 'special', path });
      assert.equal(refused.status, 400, `${path}: ${JSON.stringify(refused.body)}`);
      assert.equal(refused.body.error.code, 'invalid_adapter');
    }
    const rank = pkg.manifest.lora!.rank;
    const huge = join(scratch, 'huge.safetensors');
    safetensors(huge, {
      lora_a: { shape: [rank, pkg.dims.d_model], data: new Float32Array(rank * pkg.dims.d_model).fill(3e38) },
      lora_b: { shape: [pkg.dims.vocab_size, rank], data: new Float32Array(pkg.dims.vocab_size * rank).fill(3e38) },
    });
    assert.match((await post({ name: 'huge', path: huge })).body.error.message, /magnitude/);
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
    assert.equal((await post({ name: `library:${domains[0]}`, examples: [SEA[2]] })).body.error.code, 'adapter_exists');

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
