import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadConfig, SETTINGS, withSettingsTable } from '../src/config.js';
import { ConfigError } from '../src/errors.js';

test('an empty environment gives every setting its default, which its own parser accepts', () => {
  const config = loadConfig({});
  assert.deepEqual(Object.keys(config).sort(), SETTINGS.map((s) => s.key).sort(), 'one field per setting');
  for (const s of SETTINGS) {
    const parsed = s.parse(s.default);
    assert.notEqual(parsed, undefined, `${s.env}'s default ${JSON.stringify(s.default)} must be ${s.expect}`);
    assert.deepEqual(config[s.key], parsed, `${s.env} unset is its default`);
  }
});

test('a variable set to the empty string is unset', () => {
  assert.deepEqual(loadConfig(Object.fromEntries(SETTINGS.map((s) => [s.env, '']))), loadConfig({}));
});

test('each setting has its own variable and its own field', () => {
  assert.equal(new Set(SETTINGS.map((s) => s.env)).size, SETTINGS.length);
  assert.equal(new Set(SETTINGS.map((s) => s.key)).size, SETTINGS.length);
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
