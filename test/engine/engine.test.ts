/**
 * The worker engine on the real default package: one decoder run serves rows of different lengths and
 * adapters exactly as if each ran alone.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { EngineClient } from '../../src/engine/client.js';
import type { RowEvent, RowSpec, SamplingParams, TokenLogprob } from '../../src/engine/protocol.js';
import { ModelPackageError } from '../../src/errors.js';
import { ModelPackage } from '../../src/model/package.js';
import { MODEL_DIR } from '../helpers/app.js';
import { copyPackage } from '../helpers/package-copy.js';

const logger = { warn() {}, info() {}, error() {} };
const pkg = ModelPackage.open(MODEL_DIR);
const D = pkg.dims.d_model;
let engine: EngineClient;
let nextBatch = 1;

before(async () => {
  engine = await EngineClient.start({ modelDir: MODEL_DIR, device: 'cpu', threads: 1, slots: 8, prefillChunkTokens: 16, logger });
});
after(async () => {
  await engine.close();
});

function row(text: string, adapterIndex: number, extra: Partial<Omit<RowSpec, 'sampling'> & SamplingParams> = {}): RowSpec {
  const { promptIds = pkg.tokenizer.encodePrompt(text), bosAdded = pkg.tokenizer.addBos, adaptationScale = 1, promptLogprobs = true, ...sampling } = extra;
  return {
    promptIds, bosAdded, adapterIndex, adaptationScale, promptLogprobs,
    sampling: { maxTokens: 5, temperature: 0, topP: 1, topK: 0, seed: 1, stop: [], logprobs: 2, ignoreEos: true, minTokens: 0, stopTokenIds: [], ...sampling },
  };
}

interface RowResult { prompt: number[]; generated: number[]; ids: number[]; text: string; finish?: string; tokens: string[] }

async function run(rows: RowSpec[], contexts: Float32Array[] = [], cancelAfterFirstStep: number[] = [], onFirstEvents?: () => void, weights: number[] = contexts.map(() => 1)): Promise<RowResult[]> {
  const out: RowResult[] = rows.map(() => ({ prompt: [], generated: [], ids: [], text: '', tokens: [] }));
  const batchId = nextBatch++;
  const flat = new Float32Array(Math.max(1, contexts.length) * D);
  contexts.forEach((c, i) => flat.set(c, i * D));
  let steps = 0;
  await engine.run({ batchId, rows, contexts: flat, contextCount: contexts.length, contextWeights: Float32Array.from(weights), factors: [] }, {
    onPrompt: (r, lps: TokenLogprob[]) => { out[r].prompt = lps.map((l) => l.logprob ?? NaN); },
    onEvents: (events: RowEvent[]) => {
      if (steps++ === 0) {
        if (cancelAfterFirstStep.length > 0) engine.cancel(batchId, cancelAfterFirstStep);
        onFirstEvents?.();
      }
      for (const e of events) {
        out[e.row].text += e.text;
        if (e.token !== undefined) out[e.row].ids.push(e.token);
        if (e.logprob) {
          out[e.row].generated.push(e.logprob.logprob!);
          out[e.row].tokens.push(e.logprob.token);
        }
        if (e.finish) out[e.row].finish = e.finish;
      }
    },
  });
  return out;
}

const close = (a: number[], b: number[], tol = 1e-4) => a.length === b.length && a.every((x, i) => Math.abs(x - b[i]) < tol);

describe('engine worker', () => {
  test('a batch of prompts of different lengths (prefilled in chunks) gives every row what it gets alone (prompt and generated logprobs)', async () => {
    const texts = ['The whale', 'Permission is hereby granted, free of charge', 'A'];
    const alone: RowResult[] = [];
    for (const [i, t] of texts.entries()) alone.push((await run([row(t, i % 2)]))[0]);
    const together = await run(texts.map((t, i) => row(t, i % 2)));
    together.forEach((r, i) => {
      assert.ok(close(r.prompt, alone[i].prompt), `row ${i} prompt logprobs`);
      assert.ok(close(r.generated, alone[i].generated), `row ${i} generated logprobs`);
      assert.equal(r.text, alone[i].text);
      assert.equal(r.finish, 'length');
    });
  });

  test('each row reads its own adapter: zero, static, or one hypernetwork context', async () => {
    const context = new Float32Array(D).map((_, j) => Math.sin(j + 1));
    const [zero, stat, hyper] = await run([row('The whale', 0), row('The whale', 1), row('The whale', 2)], [context]);
    assert.ok(!close(zero.prompt, stat.prompt, 1e-3), 'static differs from zero');
    assert.ok(!close(zero.prompt, hyper.prompt, 1e-3), 'hypernetwork adapter differs from zero');
    const [hyperAlone] = await run([row('The whale', 2)], [context]);
    assert.ok(close(hyper.prompt, hyperAlone.prompt));
  });

  test('a context\'s weight scales its generated update alone: 0 is the static LoRA, 1 the whole update, 0.5 between', async () => {
    assert.equal(pkg.manifest.hypernet!.on_static, true, 'the default package adds its generated update to the static LoRA');
    const context = new Float32Array(D).map((_, j) => Math.cos(j + 2));
    const [stat] = await run([row('The whale', 1)]);
    const [none, half, whole] = await run([row('The whale', 2), row('The whale', 3), row('The whale', 4)], [context, context, context], [], undefined, [0, 0.5, 1]);
    assert.ok(close(none.prompt, stat.prompt), 'weight 0: exactly the static LoRA');
    assert.ok(!close(whole.prompt, stat.prompt, 1e-3), 'weight 1: the generated update changes the output');
    const between = half.prompt.map((x, i) => (x - stat.prompt[i]) * (x - whole.prompt[i]));
    assert.ok(between.filter((p) => p <= 1e-9).length >= 0.8 * between.length, 'weight 0.5: most logprobs lie between static and the whole update');
    const [wholeAlone] = await run([row('The whale', 2)], [context]);
    assert.ok(close(whole.prompt, wholeAlone.prompt), 'weight 1 is what a context without a weight got before');
  });

  test('rows finish independently; a cancel message reaches a running row', async () => {
    const long = pkg.dims.context - 8;
    const results = await run([row('The whale', 0, { maxTokens: 2 }), row('The whale', 0, { maxTokens: 8 }), row('The ship', 0, { maxTokens: long })], [], [2]);
    assert.equal(results[0].generated.length, 2);
    assert.equal(results[1].generated.length, 8);
    // The cancel crosses threads while the worker keeps decoding; it lands within a few steps (decode-loop tests
    // check the exact behaviour without the thread hop).
    assert.equal(results[2].finish, 'cancelled');
    assert.ok(results[2].generated.length < long);
  });

  test('a batch that arrives mid-decode joins the running rows; every row still gets what it gets alone', async () => {
    const ctxA = new Float32Array(D).map((_, j) => Math.cos(j));
    const ctxB = new Float32Array(D).map((_, j) => Math.sin(2 * j));
    const a = [row('The whale rose from the sea', 2, { maxTokens: 10 }), row('A', 0, { maxTokens: 6 })];
    const b = [row('Permission is hereby granted, free of charge to any person', 2, { maxTokens: 4 }), row('The ship', 1, { maxTokens: 12 })];
    const aloneA = await run(a, [ctxA]);
    const aloneB = await run(b, [ctxB]);
    let joined: Promise<RowResult[]> | null = null;
    const withA = await run(a, [ctxA], [], () => { joined = run(b, [ctxB]); });
    const withB = await joined!;
    for (const [together, alone] of [[withA, aloneA], [withB, aloneB]] as const) {
      together.forEach((r, i) => {
        assert.ok(close(r.prompt, alone[i].prompt), `row ${i} prompt logprobs`);
        assert.ok(close(r.generated, alone[i].generated), `row ${i} generated logprobs ${r.generated} vs ${alone[i].generated}`);
        assert.equal(r.text, alone[i].text);
      });
    }
  });

  test('a prompt longer than a prefill chunk, without prompt logprobs, is prefilled in chunks that need no logits', async () => {
    const text = 'The whale rose from the sea, and the men pulled hard at the oars while the captain watched from the deck of the ship, and the wind carried the spray over the boats as they followed the great white fish';
    const plain = { logprobs: null, promptLogprobs: false };
    const [chunked] = await run([row(text, 0, plain)]);
    assert.ok(pkg.tokenizer.encodePrompt(text).length > 2 * 16, 'longer than two chunks of 16');
    const [scored] = await run([row(text, 0)]);
    assert.equal(chunked.finish, 'length');
    assert.equal(chunked.text, scored.text, 'the same greedy text as when every position gets logits');
  });

  test('a row that outgrows half the context moves the cache to the full stride mid-decode; every row keeps what it gets alone', async () => {
    const half = pkg.dims.context / 2;
    const text = 'The whale rose from the sea, and the men pulled hard at the oars while the captain watched from the deck of the ship. ';
    const longIds = pkg.tokenizer.encodePrompt(text.repeat(6)).slice(0, half - 10);
    const long: RowSpec = { ...row('', 0, { maxTokens: 25, promptLogprobs: false }), promptIds: longIds };
    const short = row('The whale', 1, { maxTokens: 30, promptLogprobs: false });
    const [longAlone] = await run([long]);
    const [shortAlone] = await run([short]);
    const [longTogether, shortTogether] = await run([long, short]);
    assert.ok(longIds.length + longAlone.ids.length > half, `the long row crosses ${half} positions while it decodes`);
    assert.ok(close(shortTogether.generated, shortAlone.generated), 'the short row, whose positions the layout change moved');
    assert.ok(close(longTogether.generated, longAlone.generated), 'the long row');
    const echo: RowSpec = { ...row('', 0, { maxTokens: 0 }), promptIds: [...longIds, ...longAlone.ids] };
    const [scored] = await run([echo]);
    assert.ok(close(scored.prompt.slice(-longAlone.ids.length), longAlone.generated), 'generated logprobs equal the prompt logprobs of the same tokens, prefilled in chunks across the boundary');
  });

  test('a prompt prefilled past half the context while a short row decodes: both rows get what they get alone', async () => {
    const text = 'Permission is hereby granted, free of charge, to any person obtaining a copy of this software. ';
    const longIds = pkg.tokenizer.encodePrompt(text.repeat(12)).slice(0, 200);
    const long: RowSpec = { ...row('', 1, { maxTokens: 4 }), promptIds: longIds };
    const short = row('The whale', 0, { maxTokens: 40, promptLogprobs: false });
    const [shortAlone] = await run([short]);
    const [longAlone] = await run([long]);
    const [shortTogether, longTogether] = await run([short, long]);
    assert.ok(shortTogether.generated.length === 40 && longTogether.prompt.length === longIds.length - 1);
    assert.ok(close(shortTogether.generated, shortAlone.generated), 'the decoding row');
    assert.ok(close(longTogether.prompt, longAlone.prompt), 'the prefilled row\'s prompt logprobs (chunks of 16 across the boundary)');
    assert.ok(close(longTogether.generated, longAlone.generated), 'the prefilled row\'s generated logprobs');
  });

  test('a temperature too small for float32 (1e-39) samples as greedy instead of from NaN probabilities', async () => {
    const [greedy] = await run([row('The whale rose', 0, { maxTokens: 8 })]);
    const [tiny] = await run([row('The whale rose', 0, { maxTokens: 8, temperature: 1e-39, topP: 0.9 })]);
    assert.equal(tiny.text, greedy.text);
  });

  test('max_tokens 0 only scores the prompt', async () => {
    const [r] = await run([row('The whale rose', 0, { maxTokens: 0 })]);
    assert.equal(r.generated.length, 0);
    assert.equal(r.finish, 'length');
    assert.equal(r.prompt.length, pkg.tokenizer.encode('The whale rose').length);
    assert.ok(r.prompt.every(Number.isFinite));
  });

  test('an ONNX graph that does not match the manifest stops the start, naming the problem', async () => {
    const copy = copyPackage();
    try {
      copyFileSync(join(MODEL_DIR, copy.manifest.files.hypernet), join(copy.dir, copy.manifest.files.decoder));
      const { sha256: _, ...manifest } = copy.manifest;
      copy.writeManifest(manifest);
      await assert.rejects(EngineClient.start({ modelDir: copy.dir, device: 'cpu', threads: 1, slots: 8, prefillChunkTokens: 16, logger }), (error: unknown) => {
        assert.ok(error instanceof ModelPackageError, String(error));
        assert.match(error.message, /does not match its manifest: decoder\.onnx has no input named input_ids/);
        return true;
      });
    } finally {
      copy.remove();
    }
  });

  test('DEVICE=cuda without a usable CUDA falls back to CPU with a warning', async () => {
    const warnings: string[] = [];
    const cuda = await EngineClient.start({ modelDir: MODEL_DIR, device: 'cuda', threads: 1, slots: 8, prefillChunkTokens: 16, logger: { ...logger, warn: (_o: object, m: string) => warnings.push(m) } });
    try {
      if (cuda.provider === 'cuda') return; // a machine with CUDA: nothing to fall back from
      assert.equal(cuda.provider, 'cpu');
      assert.ok(warnings.some((w) => /CUDA execution provider could not start.*falling back to CPU/.test(w)), warnings.join('\n'));
    } finally {
      await cuda.close();
    }
  });
});

describe('engine priority', () => {
  /** Per thread of this process: [nice, scheduling policy] (/proc/<pid>/task/<tid>/stat fields 19 and 41). */
  const schedulingOf = (path: string) => {
    const fields = readFileSync(path, 'utf8').split(') ')[1].split(' ');
    return { nice: Number(fields[16]), policy: Number(fields[38]) };
  };
  /** Every thread still alive once read: one that exits between the listing and the read (a closed engine's) is left out. */
  const threads = () => readdirSync('/proc/self/task').flatMap((tid) => {
    try {
      return [schedulingOf(`/proc/self/task/${tid}/stat`)];
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
  });
  const SCHED_OTHER = 0;
  const SCHED_IDLE = 5;

  test('ENGINE_NICE lowers the inference thread and its ONNX Runtime threads, not the event loop', { skip: !existsSync('/proc/thread-self') }, async () => {
    const before = threads().filter((t) => t.nice === 7).length;
    const nice = await EngineClient.start({ modelDir: MODEL_DIR, device: 'cpu', threads: 2, slots: 2, prefillChunkTokens: 16, priority: 7, logger });
    try {
      const lowered = threads().filter((t) => t.nice === 7).length - before;
      assert.ok(lowered >= 2, `the worker and at least one ONNX Runtime thread run at nice 7 (${lowered} threads)`);
      assert.equal(schedulingOf('/proc/thread-self/stat').nice, 0, 'the event loop keeps its priority');
    } finally {
      await nice.close();
    }
  });

  test('ENGINE_NICE=idle puts the inference thread and its ONNX Runtime threads in SCHED_IDLE, not the event loop', { skip: !existsSync('/proc/thread-self') || !existsSync('/usr/bin/chrt') }, async () => {
    const before = threads().filter((t) => t.policy === SCHED_IDLE).length;
    const warnings: string[] = [];
    const idle = await EngineClient.start({ modelDir: MODEL_DIR, device: 'cpu', threads: 2, slots: 2, prefillChunkTokens: 16, priority: 'idle', logger: { ...logger, warn: (_o: object, m: string) => warnings.push(m) } });
    try {
      assert.deepEqual(warnings, []);
      const lowered = threads().filter((t) => t.policy === SCHED_IDLE).length - before;
      assert.ok(lowered >= 2, `the worker and at least one ONNX Runtime thread run in SCHED_IDLE (${lowered} threads)`);
      assert.equal(schedulingOf('/proc/thread-self/stat').policy, SCHED_OTHER, 'the event loop keeps its class');
      let generated = 0;
      await idle.run({ batchId: 1, rows: [row('The whale', 0, { maxTokens: 3 })], contexts: new Float32Array(D), contextCount: 0, contextWeights: new Float32Array(0), factors: [] }, {
        onPrompt() {},
        onEvents: (events: RowEvent[]) => { generated += events.filter((e) => e.token !== undefined).length; },
      });
      assert.equal(generated, 3, 'an engine in SCHED_IDLE still generates');
    } finally {
      await idle.close();
    }
  });
});

describe('engine failure', () => {
  test('a worker that dies fails its batch, reports once, and closes without hanging', async () => {
    const dying = await EngineClient.start({ modelDir: MODEL_DIR, device: 'cpu', threads: 1, slots: 8, prefillChunkTokens: 16, logger });
    const failures: Error[] = [];
    dying.onFailure((error) => failures.push(error));
    const running = dying.run({ batchId: 1, rows: [row('The whale', 0, { maxTokens: 40 })], contexts: new Float32Array(D), contextCount: 0, contextWeights: new Float32Array(0), factors: [] }, { onPrompt() {}, onEvents() {} });
    await (dying as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
    await assert.rejects(running, /inference worker exited/);
    assert.equal(failures.length, 1);
    await assert.rejects(dying.run({ batchId: 2, rows: [row('The whale', 0)], contexts: new Float32Array(D), contextCount: 0, contextWeights: new Float32Array(0), factors: [] }, { onPrompt() {}, onEvents() {} }),
      /inference worker exited/, 'a failed engine refuses new batches');
    await dying.close();
  });
});
