import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
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

describe('API_KEY and ADMIN_TOKEN, or their files', () => {
  const KEY = 'k'.repeat(31) + 'Q';
  const TOKEN = 'Aa0-._~+/'.repeat(4) + '==';
  let dir: string;
  before(() => { dir = mkdtempSync(join(tmpdir(), 'secrets-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, content: string) => {
    const path = join(dir, name);
    writeFileSync(path, content);
    return path;
  };

  test('unset by default; 32 or more characters of RFC 6750\'s b64token set are taken, = padding at the end included', () => {
    assert.equal(loadConfig({}).apiKey, '');
    assert.equal(loadConfig({}).adminToken, '');
    assert.deepEqual(loadConfig({}).apiKeyProtects, ['metrics', 'docs']);
    assert.equal(loadConfig({ API_KEY: KEY }).apiKey, KEY);
    assert.equal(loadConfig({ ADMIN_TOKEN: TOKEN }).adminToken, TOKEN);
  });

  test('too short, or a character outside the set: the start stops, naming the variable and never quoting the value', () => {
    for (const [env, value] of [['API_KEY', 'k'.repeat(31)], ['API_KEY', `${'k'.repeat(32)} x`], ['ADMIN_TOKEN', `${'k'.repeat(32)}@`], ['ADMIN_TOKEN', `${'k'.repeat(16)}=${'k'.repeat(16)}`], ['API_KEY', 'change-me']]) {
      assert.throws(() => loadConfig({ [env!]: value }), (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        assert.match(error.message, new RegExp(`${env} must be empty or at least 32 characters`));
        assert.ok(!error.message.includes(value!), 'the value is not in the message');
        return true;
      });
    }
  });

  test('_FILE: the file\'s content without its trailing newline, checked the same way; both set, or an unreadable file, stops the start', () => {
    assert.equal(loadConfig({ API_KEY_FILE: file('key', `${KEY}\n`) }).apiKey, KEY);
    assert.equal(loadConfig({ ADMIN_TOKEN_FILE: file('token', `${TOKEN}\r\n`) }).adminToken, TOKEN);
    assert.equal(loadConfig({ API_KEY_FILE: file('bare', KEY) }).apiKey, KEY);
    assert.throws(() => loadConfig({ API_KEY: KEY, API_KEY_FILE: file('both', KEY) }), /set API_KEY or API_KEY_FILE, not both/);
    assert.throws(() => loadConfig({ ADMIN_TOKEN: TOKEN, ADMIN_TOKEN_FILE: file('both2', TOKEN) }), /set ADMIN_TOKEN or ADMIN_TOKEN_FILE, not both/);
    assert.throws(() => loadConfig({ API_KEY_FILE: join(dir, 'missing') }), /API_KEY_FILE: cannot read .*missing \(ENOENT\)/);
    for (const content of ['short\n', '', `${KEY}\n\n`, ` ${KEY}`]) {
      assert.throws(() => loadConfig({ API_KEY_FILE: file('bad', content) }), (error: unknown) => {
        assert.match((error as Error).message, /API_KEY_FILE must name a file holding at least 32 characters/);
        assert.ok(content.trim() === '' || !(error as Error).message.includes(content.trim()), 'the content is not in the message');
        return true;
      });
    }
  });

  test('ADMIN_TOKEN equal to API_KEY stops the start (every client would be an admin)', () => {
    assert.throws(() => loadConfig({ API_KEY: KEY, ADMIN_TOKEN: KEY }), /ADMIN_TOKEN must differ from API_KEY/);
    assert.throws(() => loadConfig({ API_KEY_FILE: file('same', KEY), ADMIN_TOKEN: KEY }), /ADMIN_TOKEN must differ from API_KEY/);
  });

  test('API_KEY_PROTECTS: metrics, docs, both, or none', () => {
    assert.deepEqual(loadConfig({ API_KEY_PROTECTS: 'docs' }).apiKeyProtects, ['docs']);
    assert.deepEqual(loadConfig({ API_KEY_PROTECTS: 'docs, metrics' }).apiKeyProtects, ['docs', 'metrics']);
    assert.deepEqual(loadConfig({ API_KEY_PROTECTS: 'none' }).apiKeyProtects, []);
    assert.throws(() => loadConfig({ API_KEY_PROTECTS: 'health' }), /API_KEY_PROTECTS must be metrics, docs, metrics,docs or none \(got "health"\)/);
  });
});
