/** MAX_MODEL_LEN and the KV cache's memory limit, settled before the engine starts. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MEMORY_MARGIN_BYTES, planKvCache, processMemory, resolveMaxModelLen } from '../../src/engine/kv-memory.js';
import { ConfigError } from '../../src/errors.js';
import { ModelPackage } from '../../src/model/package.js';
import { buildApp } from '../../src/app.js';
import { MODEL_DIR, testConfig } from '../helpers/app.js';

const pkg = ModelPackage.open(MODEL_DIR);
const GIB = 1024 ** 3;

test('MAX_MODEL_LEN: by default the context up to 4096; above the context it stops the start', () => {
  assert.equal(resolveMaxModelLen(0, 256), 256);
  assert.equal(resolveMaxModelLen(0, 8192), 4096);
  assert.equal(resolveMaxModelLen(100, 256), 100);
  assert.equal(resolveMaxModelLen(256, 256), 256);
  assert.throws(() => resolveMaxModelLen(257, 256), (error: unknown) => {
    assert.ok(error instanceof ConfigError);
    assert.match(error.message, /MAX_MODEL_LEN=257 is more than the model's context of 256 positions \(dims\.context\)/);
    return true;
  });
});

test('the KV cache is slots x layers x 2 x KV heads x MAX_MODEL_LEN x head_dim x 4 bytes, checked against the limit', () => {
  const { n_layer: L, head_dim: HD } = pkg.dims;
  const heads = pkg.dims.n_kv_head ?? pkg.dims.n_head;
  const plenty = { bytes: 64 * GIB, source: 'machine' as const };
  const plan = planKvCache({ maxModelLen: 0, maxBatchSize: 32, kvCacheMaxBytes: 0 }, pkg, plenty);
  assert.deepEqual(plan.shape, { slots: 32, layers: L, heads, headDim: HD, capacity: pkg.dims.context });
  assert.equal(plan.bytes, 32 * L * 2 * heads * pkg.dims.context * HD * 4);
  assert.ok(plan.limit < 64 * GIB - MEMORY_MARGIN_BYTES && plan.limit > 60 * GIB, String(plan.limit));
  assert.match(plan.limitRule, /machine's memory \(64\.00 GiB\) less twice the package's files/);
  assert.equal(planKvCache({ maxModelLen: 64, maxBatchSize: 8, kvCacheMaxBytes: 0 }, pkg, plenty).bytes, 8 * L * 2 * heads * 64 * HD * 4);

  // a cache larger than the setting, or than the memory less the margin, is refused with the numbers and what to change
  assert.throws(() => planKvCache({ maxModelLen: 0, maxBatchSize: 32, kvCacheMaxBytes: 1_000_000 }, pkg, plenty), (error: unknown) => {
    assert.ok(error instanceof ConfigError);
    assert.match(error.message, /The KV cache would take [\d.]+ MiB \(32 slots \(MAX_BATCH_SIZE\) x \d+ layers x 2 \(keys, values\) x \d+ KV heads x 256 positions \(MAX_MODEL_LEN\) x head_dim \d+ x 4 bytes\), more than the 1\.0 MiB allowed \(KV_CACHE_MAX_BYTES=1000000\); lower MAX_BATCH_SIZE or MAX_MODEL_LEN, or set KV_CACHE_MAX_BYTES/);
    return true;
  });
  assert.throws(() => planKvCache({ maxModelLen: 0, maxBatchSize: 32, kvCacheMaxBytes: 0 }, pkg, { bytes: GIB, source: 'cgroup' }),
    /more than the 0\.0 MiB allowed \(the cgroup's memory limit \(1\.00 GiB\) less twice the package's files/);
  assert.throws(() => planKvCache({ maxModelLen: 300, maxBatchSize: 1, kvCacheMaxBytes: 0 }, pkg, plenty), /MAX_MODEL_LEN=300 is more than the model's context/);
});

test('the process memory is the cgroup limit when there is one below the machine\'s, else the machine\'s', () => {
  const memory = processMemory();
  assert.ok(memory.bytes > 0);
  assert.ok(memory.source === 'machine' || memory.source === 'cgroup');
});

test('the service logs the KV cache at start, and a MAX_MODEL_LEN or cache that cannot be served stops it before the engine starts', async () => {
  const lines: string[] = [];
  const app = await buildApp(testConfig({ logLevel: 'info', maxBatchSize: 2, maxModelLen: 16 }), { logger: { level: 'info', stream: { write: (line: string) => { lines.push(line); } } } });
  try {
    await app.chameleon.started;
    const logged = lines.map((l) => JSON.parse(l)).find((l) => typeof l.msg === 'string' && l.msg.startsWith('KV cache:'));
    assert.ok(logged, lines.join(''));
    const heads = pkg.dims.n_kv_head ?? pkg.dims.n_head;
    assert.equal(logged.kvCacheBytes, 2 * pkg.dims.n_layer * 2 * heads * 16 * pkg.dims.head_dim * 4);
    assert.equal(logged.slots, 2);
    assert.equal(logged.maxModelLen, 16, 'the shortest setting: the warm-up fits it');
    assert.match(logged.msg, /2 slots \(MAX_BATCH_SIZE\) x \d+ layers .* x 16 positions \(MAX_MODEL_LEN\)/);
    assert.equal(app.chameleon.service.contextLength, 16);
  } finally {
    await app.close();
  }
  await assert.rejects(buildApp(testConfig({ maxModelLen: pkg.dims.context + 1 })), (error: unknown) => {
    assert.ok(error instanceof ConfigError);
    assert.match(error.message, /MAX_MODEL_LEN=\d+ is more than the model's context/);
    return true;
  });
  await assert.rejects(buildApp(testConfig({ kvCacheMaxBytes: 1024 })), /The KV cache would take .* more than the 0\.0 MiB allowed \(KV_CACHE_MAX_BYTES=1024\)/);
});
