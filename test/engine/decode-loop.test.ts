/**
 * The decode loop against a scripted runtime whose "KV cache" records each row's slots, so that padding,
 * joins, trims and cancellation are checked exactly, without ONNX Runtime.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DecodeLoop, type AdapterPart, type AdapterStack, type JobHooks, type KvCache, type Runtime, type StepFeeds, type StepResult } from '../../src/engine/decode-loop.js';
import type { RowEvent, RowSpec } from '../../src/engine/protocol.js';

const V = 50;
const PAD = -1;

/** Per row, the token in each cache slot (PAD for padding). */
class FakeKv implements KvCache {
  constructor(readonly slots: number[][]) {}
  get batch() { return this.slots.length; }
  get length() { return this.slots[0]?.length ?? 0; }
}

class FakeStack implements AdapterStack {
  constructor(readonly offsets: number[]) {}
  get slots() { return this.offsets.length; }
}

/**
 * Next-token logits depend only on a row's real tokens (in order) and its adapter: the argmax is
 * (sum of real tokens + position + adapter offset) mod V. Masks are checked against the recorded slots.
 */
class FakeRuntime implements Runtime {
  readonly vocabSize = V;
  runs: number[] = [];
  async hypernet(contexts: Float32Array, count: number): Promise<AdapterPart> {
    return { count, offsets: Array.from(contexts.subarray(0, count)) } as AdapterPart;
  }
  stack(parts: readonly AdapterPart[]): AdapterStack {
    return new FakeStack([0, 7, ...parts.flatMap((p) => (p as unknown as { offsets: number[] }).offsets)]);
  }
  async step(f: StepFeeds, adapters: AdapterStack): Promise<StepResult> {
    const past = (f.past as FakeKv | null)?.slots ?? Array.from({ length: f.batch }, () => []);
    const total = past[0].length + f.seq;
    this.runs.push(f.batch);
    const logits = new Float32Array(f.batch * f.seq * V);
    const slots = past.map((row, b) => {
      const next = [...row];
      for (let t = 0; t < f.seq; t++) next.push(f.attentionMask[b * total + row.length + t] === 1n ? Number(f.inputIds[b * f.seq + t]) : PAD);
      next.forEach((token, j) => assert.equal(f.attentionMask[b * total + j] === 1n, token !== PAD, `row ${b} slot ${j}: mask matches the cache`));
      for (let t = 0; t < f.seq; t++) {
        const real = next.slice(0, row.length + t + 1).filter((x) => x !== PAD);
        const offset = (adapters as FakeStack).offsets[Number(f.clusterIndex[b])];
        assert.equal(Number(f.positionIds[b * f.seq + t]), next[row.length + t] === PAD ? Number(f.positionIds[b * f.seq + t]) : real.length - 1, 'position = real tokens before');
        const target = (real.reduce((s, x) => s + x, 0) + real.length + offset) % V;
        logits[(b * f.seq + t) * V + target] = 5;
      }
      return next;
    });
    return { logits, kv: new FakeKv(slots) };
  }
  selectRows(kv: KvCache, rows: readonly number[], trim: number): KvCache {
    const fake = kv as FakeKv;
    rows.forEach((r) => assert.ok(fake.slots[r].slice(0, trim).every((x) => x === PAD), 'only padding is trimmed'));
    return new FakeKv(rows.map((r) => fake.slots[r].slice(trim)));
  }
  concat(a: KvCache, b: KvCache): KvCache {
    const length = Math.max(a.length, b.length);
    const pad = (rows: number[][], n: number) => rows.map((row) => [...new Array(n - row.length).fill(PAD), ...row]);
    return new FakeKv([...pad((a as FakeKv).slots, length), ...pad((b as FakeKv).slots, length)]);
  }
}

const codec = { eosId: 0, decode: (ids: readonly number[]) => ids.map((i) => `<${i}>`).join(''), piece: (i: number) => `<${i}>` };

function spec(prompt: number[], slot: number, maxTokens: number, over: Partial<RowSpec> = {}): RowSpec {
  return { promptIds: prompt, bosAdded: false, slot, maxTokens, temperature: 0, topP: 1, topK: 0, seed: 0, stop: [], logprobs: null, promptLogprobs: false, ignoreEos: true, ...over };
}

function collector(cancel: (row: number, events: number) => boolean = () => false) {
  const texts: string[] = [];
  const finishes: string[] = [];
  let events = 0;
  const hooks: JobHooks = {
    onAdapted() {},
    onPrompt() {},
    onEvents(list: RowEvent[]) {
      events++;
      for (const e of list) {
        texts[e.row] = (texts[e.row] ?? '') + e.text;
        if (e.finish) finishes[e.row] = e.finish;
      }
    },
    isCancelled: (row) => cancel(row, events),
  };
  return { hooks, texts, finishes };
}

const jobA = { batchId: 1, rows: [spec([3, 4, 5], 2, 6), spec([9], 1, 3)], contexts: Float32Array.from([11]), contextCount: 1 };
const jobB = { batchId: 2, rows: [spec([1, 2, 3, 4, 5, 6, 7], 2, 4), spec([8, 8], 0, 9)], contexts: Float32Array.from([23]), contextCount: 1 };
const jobC = { batchId: 5, rows: [spec([7], 2, 3), spec([6], 1, 2)], contexts: Float32Array.from([5]), contextCount: 1 };

async function alone(job: typeof jobA) {
  const c = collector();
  await new DecodeLoop(new FakeRuntime(), codec, undefined, undefined, async () => {}).submit(job, c.hooks);
  return c;
}

test('jobs joining a running decode (longer or shorter caches) give every row what it gets alone', async () => {
  const a = await alone(jobA);
  const b = await alone(jobB);
  const c = await alone(jobC);
  const runtime = new FakeRuntime();
  let loop: DecodeLoop;
  let joinedB: Promise<unknown> | null = null;
  let joinedC: Promise<unknown> | null = null;
  const ca = collector();
  const cb = collector();
  const cc = collector();
  const onEvents = ca.hooks.onEvents;
  let steps = 0;
  ca.hooks.onEvents = (list) => {
    onEvents(list);
    steps++;
    joinedB ??= loop.submit(jobB, cb.hooks); // B (a longer prompt) arrives after A's prefill
    if (steps === 3) joinedC ??= loop.submit(jobC, cc.hooks); // C (a shorter cache) joins later
  };
  loop = new DecodeLoop(runtime, codec, undefined, undefined, async () => {});
  const statsA = await loop.submit(jobA, ca.hooks);
  await joinedB;
  await joinedC;
  assert.deepEqual(ca.texts, a.texts);
  assert.deepEqual(cb.texts, b.texts);
  assert.deepEqual(cc.texts, c.texts);
  assert.deepEqual(ca.finishes, ['length', 'length']);
  assert.ok(runtime.runs.some((rows) => rows >= 5), `one decoder run served rows of all three jobs: ${runtime.runs}`);
  assert.equal(statsA.tokens, 9);
});

test('a cancelled row stops at the next step; the others go on', async () => {
  const c = collector((row, events) => row === 1 && events >= 2);
  const stats = await new DecodeLoop(new FakeRuntime(), codec, undefined, undefined, async () => {}).submit(
    { batchId: 3, rows: [spec([1], 0, 5), spec([2], 0, 50)], contexts: new Float32Array(1), contextCount: 0 }, c.hooks);
  assert.deepEqual(c.finishes, ['length', 'cancelled']);
  assert.equal(stats.tokens, 5 + 2);
});

test('end of text stops a row unless ignore_eos; max_tokens 0 only prefills', async () => {
  // With adapter offset 0, prompt [V - 1] predicts (V - 1 + 1) % V = 0 = EOS.
  const c = collector();
  await new DecodeLoop(new FakeRuntime(), codec, undefined, undefined, async () => {}).submit(
    { batchId: 4, rows: [spec([V - 1], 0, 5, { ignoreEos: false }), spec([V - 1], 0, 2), spec([5], 0, 0)], contexts: new Float32Array(1), contextCount: 0 }, c.hooks);
  assert.deepEqual(c.finishes, ['stop', 'length', 'length']);
  assert.equal(c.texts[0], '');
  assert.equal(c.texts[1], '<0><1>');
});
