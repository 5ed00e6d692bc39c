/**
 * The process: `src/server.ts` as a child process (config and package errors stop the start; SIGTERM drains).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { MODEL, MODEL_DIR } from './helpers/app.js';
import { copyPackage } from './helpers/package-copy.js';

interface Run { child: ChildProcess; output: () => string; exit: Promise<number | null> }

function start(env: Record<string, string>): Run {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    env: { ...process.env, HOST: '127.0.0.1', PORT: '0', MODEL_DIR, THREADS: '1', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d) => { output += d; });
  child.stderr!.on('data', (d) => { output += d; });
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, output: () => output, exit };
}

async function waitFor(run: Run, pattern: RegExp, timeoutMs = 60_000): Promise<RegExpMatchArray> {
  const started = Date.now();
  for (;;) {
    const match = run.output().match(pattern);
    if (match) return match;
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${pattern}; output:\n${run.output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('server process', () => {
  test('an invalid setting stops the start with a message naming it', async () => {
    const run = start({ MAX_BATCH_SIZE: 'lots' });
    assert.equal(await run.exit, 1);
    assert.match(run.output(), /chameleon-serve: Invalid configuration: MAX_BATCH_SIZE must be an integer from 1 to 4096 \(got "lots"\)/);
  });

  test('a key too short to be safe stops the start, naming the variable and not the key', async () => {
    const run = start({ API_KEY: 'hunter2-hunter2' });
    assert.equal(await run.exit, 1);
    assert.match(run.output(), /chameleon-serve: Invalid configuration: API_KEY must be empty or at least 32 characters of .* \(got 15 characters\)/);
    assert.ok(!run.output().includes('hunter2'), 'the key is not printed');
  });

  test('a MAX_MODEL_LEN above the model\'s context, or a KV cache over its memory limit, stops the start with the numbers', async () => {
    const long = start({ MAX_MODEL_LEN: '100000' });
    assert.equal(await long.exit, 1);
    assert.match(long.output(), /chameleon-serve: MAX_MODEL_LEN=100000 is more than the model's context of \d+ positions \(dims\.context\)/);
    const big = start({ KV_CACHE_MAX_BYTES: '1000' });
    assert.equal(await big.exit, 1);
    assert.match(big.output(), /chameleon-serve: The KV cache would take [\d.]+ MiB \(32 slots \(MAX_BATCH_SIZE\) x .*\), more than the 0\.0 MiB allowed \(KV_CACHE_MAX_BYTES=1000\); lower MAX_BATCH_SIZE or MAX_MODEL_LEN, or set KV_CACHE_MAX_BYTES/);
  });

  test('a package that does not match its manifest stops the start with a message naming the problem', async () => {
    const copy = copyPackage();
    try {
      rmSync(join(copy.dir, copy.manifest.files.static_lora_b));
      const run = start({ MODEL_DIR: copy.dir });
      assert.equal(await run.exit, 1);
      assert.match(run.output(), /chameleon-serve: Model package .* is not valid: file static_lora_b\.bin \(manifest\.files\.static_lora_b\) is missing/);
    } finally {
      copy.remove();
    }
  });

  test('SIGTERM: stop accepting, finish the stream in flight, exit 0', async () => {
    const run = start({});
    try {
      const [, url] = await waitFor(run, /Server listening at (http:\/\/127\.0\.0\.1:\d+)/);
      await waitFor(run, /"msg":"ready"/);
      const res = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, prompt: 'The whale', max_tokens: 40, temperature: 0, ignore_eos: true, stream: true }),
      });
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      const first = await reader.read(); // the batch is running
      assert.ok(!first.done);
      run.child.kill('SIGTERM');
      let text = new TextDecoder().decode(first.value);
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      assert.ok(text.trimEnd().endsWith('data: [DONE]'), 'the stream in flight finished');
      assert.equal(await run.exit, 0);
      assert.match(run.output(), /"msg":"draining: no new requests; finishing admitted ones"/);
      assert.match(run.output(), /"msg":"stopped"/);
    } finally {
      run.child.kill('SIGKILL');
    }
  });

  test('SIGTERM: a half-open connection and an idle keep-alive one do not delay the exit; exit code 0', async () => {
    const run = start({ HEADERS_TIMEOUT_MS: '60000', RECEIVE_TIMEOUT_MS: '60000', KEEP_ALIVE_TIMEOUT_MS: '60000' });
    try {
      const [, url] = await waitFor(run, /Server listening at (http:\/\/127\.0\.0\.1:(\d+))/);
      await waitFor(run, /"msg":"ready"/);
      const { port } = new URL(url);
      const halfOpen = connect(Number(port), '127.0.0.1');
      halfOpen.on('error', () => {});
      halfOpen.write('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty');
      const idle = connect(Number(port), '127.0.0.1');
      idle.on('error', () => {});
      const answered = new Promise<string>((resolve) => idle.once('data', (d) => resolve(String(d))));
      idle.write('GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n');
      assert.match(await answered, /^HTTP\/1.1 200/);
      const closed = Promise.all([halfOpen, idle].map((s) => new Promise((resolve) => s.once('close', resolve))));
      const signalled = performance.now();
      run.child.kill('SIGTERM');
      assert.equal(await run.exit, 0);
      await closed;
      assert.ok(performance.now() - signalled < 10_000, `exited ${Math.round(performance.now() - signalled)} ms after SIGTERM`);
      assert.match(run.output(), /"msg":"stopped"/);
    } finally {
      run.child.kill('SIGKILL');
    }
  });

  test('an uncaught exception is logged, drains, and exits non-zero', async () => {
    const run = start({ NODE_OPTIONS: '--import ./test/helpers/throw-later.mjs' });
    try {
      await waitFor(run, /"msg":"ready"/);
      assert.equal(await run.exit, 1);
      assert.match(run.output(), /uncaught error: thrown on purpose; draining, then exiting with code 1/);
    } finally {
      run.child.kill('SIGKILL');
    }
  });
});
