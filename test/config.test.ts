import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadConfig, SETTINGS, withSettingsTable } from '../src/config.js';
import { ConfigError } from '../src/errors.js';

test('defaults', () => {
  assert.deepEqual(loadConfig({}), {
    host: '0.0.0.0', port: 8080, modelDir: 'models/default', modelName: 'chameleon-default', maxBatchSize: 32, maxModelLen: 0, kvCacheMaxBytes: 0, maxWaitMs: 20,
    targetClusterSize: 4, maxClusters: 8, queueSize: 256, idleDispatch: true, clusterInFlight: true, prefillChunkTokens: 64, device: 'cpu', threads: 0,
    engineNice: 5, ortSpinning: false, logLevel: 'info', kmeansSeed: 0, requestTimeoutMs: 0, retryAfterSeconds: 1, headersTimeoutMs: 10_000, receiveTimeoutMs: 30_000,
    keepAliveTimeoutMs: 5000, shutdownTimeoutMs: 30_000, adminToken: '', maxAdapters: 16,
  });
});

test('environment values are parsed', () => {
  const config = loadConfig({ PORT: '9000', DEVICE: 'cuda', MAX_BATCH_SIZE: '8', THREADS: '2', MODEL_NAME: 'x', LOG_LEVEL: 'debug' });
  assert.equal(config.port, 9000);
  assert.equal(config.device, 'cuda');
  assert.equal(config.maxBatchSize, 8);
  assert.equal(config.threads, 2);
  assert.equal(config.modelName, 'x');
  assert.equal(config.logLevel, 'debug');
  assert.equal(loadConfig({ ENGINE_NICE: '7' }).engineNice, 7);
  assert.equal(loadConfig({ ENGINE_NICE: 'idle' }).engineNice, 'idle');
});

test('invalid values stop the start, each one named', () => {
  assert.throws(() => loadConfig({ MAX_BATCH_SIZE: 'abc', DEVICE: 'tpu', PORT: '70000', MAX_WAIT_MS: '1.5' }), (error: unknown) => {
    assert.ok(error instanceof ConfigError);
    assert.match(error.message, /MAX_BATCH_SIZE must be an integer from 1 to 4096 \(got "abc"\)/);
    assert.match(error.message, /DEVICE must be cpu or cuda \(got "tpu"\)/);
    assert.match(error.message, /PORT must be an integer from 0 to 65535/);
    assert.match(error.message, /MAX_WAIT_MS must be an integer/);
    return true;
  });
  assert.throws(() => loadConfig({ MAX_CLUSTERS: '0' }), /MAX_CLUSTERS/);
  assert.throws(() => loadConfig({ LOG_LEVEL: 'loud' }), /LOG_LEVEL/);
  assert.throws(() => loadConfig({ ENGINE_NICE: 'low' }), /ENGINE_NICE must be idle or an integer from 0 to 19/);
});

test('the README configuration table is the one SETTINGS writes (npm run docs:config regenerates it)', async () => {
  const { readFileSync } = await import('node:fs');
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  assert.equal(withSettingsTable(readme), readme, 'README.md configuration table is stale: run npm run docs:config');
  for (const s of SETTINGS) assert.ok(readme.includes(`| \`${s.env}\` | \`${s.default}\` |`), `${s.env} in README`);
});

test('MAX_MODEL_LEN and KV_CACHE_MAX_BYTES: 0 is automatic, otherwise at least 16 positions / any byte count', () => {
  assert.equal(loadConfig({ MAX_MODEL_LEN: '2048' }).maxModelLen, 2048);
  assert.equal(loadConfig({ MAX_MODEL_LEN: '0' }).maxModelLen, 0);
  assert.equal(loadConfig({ KV_CACHE_MAX_BYTES: '1073741824' }).kvCacheMaxBytes, 2 ** 30);
  assert.throws(() => loadConfig({ MAX_MODEL_LEN: '8' }), /MAX_MODEL_LEN must be 0 or an integer from 16 to 16777216 \(got "8"\)/);
  assert.throws(() => loadConfig({ KV_CACHE_MAX_BYTES: '-1' }), /KV_CACHE_MAX_BYTES must be an integer >= 0/);
});
