/**
 * The decode loop against a scripted runtime whose "KV cache" holds each slot's token ids, so that slot
 * assignment, moves on join and leave, chunked prefill, last-position logits and cancellation are checked exactly,
 * without ONNX Runtime.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DecodeLoop, type AdapterPart, type BatchHooks, type LoopHooks, type LoopSettings, type Runtime, type StepFeeds } from '../../src/engine/decode-loop.js';
import type { Batch, RowEvent, RowSpec, SamplingParams, TokenLogprob } from '../../src/engine/protocol.js';
import { softmaxRow } from '../../src/engine/sampling.js';

const V = 50;

interface Run { phase: 'prefill' | 'decode'; rows: number; seq: number; logits: number; newTokens: number[] }

/**
 * Next-token logits depend only on a row's cached and new tokens (in order) and its adapter: the argmax is
 * (sum of tokens + count + adapter offset) mod V. Each run checks that a row's slot holds exactly its past.
 */
class FakeRuntime implements Runtime {
  readonly vocabSize = V;
  readonly cache: number[][];
  runs: Run[] = [];
  moves = 0;
  constructor(readonly slotCount = 16) {
    this.cache = Array.from({ length: slotCount }, () => []);
  }
  async hypernet(contexts: Float32Array, count: number): Promise<AdapterPart> {
    return { count, offsets: Array.from(contexts.subarray(0, count)) } as unknown as AdapterPart;
  }
  /** Adapter "offsets" by stack index (zero, static, then placed parts); released entries are poisoned. */
  readonly offsets: number[] = [0, 7];
  readonly placed = new Map<number, number>();
  placeAdapters(parts: readonly AdapterPart[]): number {
    // hypernetwork parts carry their offsets; a ready-made part (named adapter, library selection) its a[0]
    const first = this.offsets.length;
    this.offsets.push(...parts.flatMap((p) => (p as unknown as { offsets?: number[] }).offsets ?? [p.a[0]]));
    this.placed.set(first, this.offsets.length - first);
    return first;
  }
  releaseAdapters(first: number): void {
    const count = this.placed.get(first);
    assert.ok(count !== undefined, 'released once, after being placed');
    this.offsets.fill(Number.NaN, first, first + count);
    this.placed.delete(first);
  }
  async step(f: StepFeeds): Promise<Float32Array> {
    assert.ok(f.firstSlot + f.rows <= this.slotCount, 'the run stays within the cache');
    assert.ok(f.rows > 0 && f.seq > 0, 'no empty run');
    this.runs.push({ phase: f.seq === 1 && f.logitsIndex.length === f.rows && f.newTokens.every((n) => n === 1) ? 'decode' : 'prefill', rows: f.rows, seq: f.seq, logits: f.logitsIndex.length, newTokens: f.newTokens });
    const logits = new Float32Array(f.logitsIndex.length * V);
    const rows = Array.from({ length: f.rows }, (_, b) => {
      const slot = this.cache[f.firstSlot + b];
      assert.ok(slot.length >= f.pastLength[b], `slot ${f.firstSlot + b} holds its row's past`);
      const tokens = slot.slice(0, f.pastLength[b]);
      for (let t = 0; t < f.newTokens[b]; t++) {
        assert.equal(Number(f.positionIds[b * f.seq + t]), f.pastLength[b] + t, 'position = tokens before');
        tokens.push(Number(f.inputIds[b * f.seq + t]));
      }
      return tokens;
    });
    f.logitsIndex.forEach((flat, n) => {
      const b = Math.floor(flat / f.seq);
      const t = flat % f.seq;
      assert.ok(t < f.newTokens[b], 'logits only for real positions');
      const seen = rows[b].slice(0, f.pastLength[b] + t + 1);
      const offset = this.offsets[Number(f.clusterIndex[b])];
      assert.ok(Number.isFinite(offset), 'a row reads a placed adapter, never a released one');
      logits[n * V + (seen.reduce((s, x) => s + x, 0) + seen.length + offset) % V] = 5;
    });
    rows.forEach((tokens, b) => { this.cache[f.firstSlot + b] = tokens; });
    return logits;
  }
  async softmax(logits: Float32Array, rows: readonly number[], temperatures: readonly number[]): Promise<Float32Array> {
    const out = new Float32Array(rows.length * V);
    rows.forEach((r, j) => softmaxRow(logits, r * V, V, temperatures[j], out, j * V));
    return out;
  }
  moveSlot(from: number, to: number, length: number): void {
    assert.ok(this.cache[from].length >= length);
    this.cache[to] = this.cache[from].slice(0, length);
    this.cache[from] = [-1, -1, -1]; // whatever a freed slot holds must never be read
    this.moves++;
  }
  trimCache(): void {}
}

const codec = { isEos: (i: number) => i === 0, eosIds: [0], bytes: (i: number) => new TextEncoder().encode(`<${i}>`), piece: (i: number) => `<${i}>` };

function spec(prompt: number[], adapterIndex: number, maxTokens: number, over: Partial<Omit<RowSpec, 'sampling'> & SamplingParams> = {}): RowSpec {
  const { promptIds = prompt, bosAdded = false, adaptationScale = 1, promptLogprobs = false, ...sampling } = over;
  return {
    promptIds, bosAdded, adapterIndex, adaptationScale, promptLogprobs,
    sampling: { maxTokens, temperature: 0, topP: 1, topK: 0, seed: 0, stop: [], logprobs: null, ignoreEos: true, minTokens: 0, stopTokenIds: [], ...sampling },
  };
}

function collector(cancel: (row: number, events: number) => boolean = () => false) {
  const texts: string[] = [];
  const finishes: string[] = [];
  let events = 0;
  const prompts: TokenLogprob[][] = [];
  const hooks: BatchHooks = {
    onAdapted() {},
    onPrompt(row, logprobs) { prompts[row] = logprobs; },
    onEvents(list: RowEvent[]) {
      events++;
      for (const e of list) {
        texts[e.row] = (texts[e.row] ?? '') + e.text;
        if (e.finish) finishes[e.row] = e.finish;
      }
    },
    isCancelled: (row) => cancel(row, events),
  };
  return { hooks, texts, finishes, prompts };
}

const batchA = { batchId: 1, rows: [spec([3, 4, 5], 2, 6), spec([9], 1, 3)], contexts: Float32Array.from([11]), contextCount: 1, contextWeights: Float32Array.of(1), factors: [] };
const batchB = { batchId: 2, rows: [spec([1, 2, 3, 4, 5, 6, 7], 2, 4), spec([8, 8], 0, 9)], contexts: Float32Array.from([23]), contextCount: 1, contextWeights: Float32Array.of(1), factors: [] };
const batchC = { batchId: 5, rows: [spec([7], 2, 3), spec([6], 1, 2)], contexts: Float32Array.from([5]), contextCount: 1, contextWeights: Float32Array.of(1), factors: [] };

const settings: LoopSettings = { prefillChunkTokens: 64 };
const immediate: LoopHooks = { yieldToEvents: async () => {} };

async function alone(batch: Batch, loopSettings = settings) {
  const c = collector();
  await new DecodeLoop(new FakeRuntime(), codec, loopSettings, immediate).submit(batch, c.hooks);
  return c;
}

test('batches joining a running decode (longer or shorter caches) give every row what it gets alone', async () => {
  const a = await alone(batchA);
  const b = await alone(batchB);
  const c = await alone(batchC);
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
    joinedB ??= loop.submit(batchB, cb.hooks); // B (a longer prompt) arrives after A's prefill
    if (steps === 3) joinedC ??= loop.submit(batchC, cc.hooks); // C (a shorter cache) joins later
  };
  loop = new DecodeLoop(runtime, codec, settings, immediate);
  const statsA = await loop.submit(batchA, ca.hooks);
  await joinedB;
  await joinedC;
  assert.deepEqual(ca.texts, a.texts);
  assert.deepEqual(cb.texts, b.texts);
  assert.deepEqual(cc.texts, c.texts);
  assert.deepEqual(ca.finishes, ['length', 'length']);
  assert.ok(runtime.runs.some((r) => r.phase === 'decode' && r.rows >= 5), 'one decoder run served rows of all three batches');
  assert.equal(statsA.tokens, 9);
  assert.equal(runtime.placed.size, 0, 'every batch gave its adapter entries back');
});

test('a batch\'s ready-made factors take the stack entries after its hypernetwork outputs', async () => {
  const factors = [{ rank: 1, a: Float32Array.of(31), b: Float32Array.of(0) }, { rank: 2, a: Float32Array.of(13, 0), b: Float32Array.of(0, 0) }];
  const batch: Batch = { batchId: 7, rows: [spec([3, 4], 4, 3), spec([3, 4], 3, 3), spec([3, 4], 2, 3)], contexts: Float32Array.from([11]), contextCount: 1, contextWeights: Float32Array.of(1), factors };
  const together = await alone(batch);
  const separately = await Promise.all([13, 31, 11].map((offset) => alone({ ...batch, rows: [spec([3, 4], 2, 3)], contexts: Float32Array.from([offset]), factors: [] })));
  assert.deepEqual(together.texts, separately.map((c) => c.texts[0]));
});

test('a cancelled row stops at the next step; the others go on', async () => {
  const c = collector((row, events) => row === 1 && events >= 2);
  const stats = await new DecodeLoop(new FakeRuntime(), codec, settings, immediate).submit(
    { batchId: 3, rows: [spec([1], 0, 5), spec([2], 0, 50)], contexts: new Float32Array(1), contextCount: 0, contextWeights: new Float32Array(0), factors: [] }, c.hooks);
  assert.deepEqual(c.finishes, ['length', 'cancelled']);
  assert.equal(stats.tokens, 5 + 2);
});

test('end of text stops a row unless ignore_eos; max_tokens 0 only prefills', async () => {
  // With adapter offset 0, prompt [V - 1] predicts (V - 1 + 1) % V = 0 = EOS.
  const c = collector();
  await new DecodeLoop(new FakeRuntime(), codec, settings, immediate).submit(
    { batchId: 4, rows: [spec([V - 1], 0, 5, { ignoreEos: false }), spec([V - 1], 0, 2), spec([5], 0, 0)], contexts: new Float32Array(1), contextCount: 0, contextWeights: new Float32Array(0), factors: [] }, c.hooks);
  assert.deepEqual(c.finishes, ['stop', 'length', 'length']);
  assert.equal(c.texts[0], '');
  assert.equal(c.texts[1], '<0><1>');
});

test('min_tokens holds end of text and stop ids back; stop_token_ids end a row as end of text does', async () => {
  // [V - 1] predicts EOS (0) first and [3, 4] predicts 9; a banned argmax leaves the lowest id not banned
  const c = collector();
  await new DecodeLoop(new FakeRuntime(), codec, settings, immediate).submit({
    batchId: 6,
    rows: [spec([V - 1], 0, 5, { ignoreEos: false, minTokens: 3 }), spec([3, 4], 0, 5, { stopTokenIds: [9] }), spec([3, 4], 0, 5, { ignoreEos: false, stopTokenIds: [9], minTokens: 1 })],
    contexts: new Float32Array(1), contextCount: 0, contextWeights: new Float32Array(0), factors: [],
  }, c.hooks);
  assert.deepEqual(c.finishes, ['length', 'stop', 'length']);
  assert.equal(c.texts[0], '<1><2><5><11><23>', 'no end of text before 3 tokens; once past them it is allowed again');
  assert.equal(c.texts[1], '', 'the stop id ends the row and is not part of its text');
  assert.ok(c.texts[2].startsWith('<1>'), `the stop id is held back for the first token: ${c.texts[2]}`);
});

/** Every logits row is the same: 5 first (3), then 6 (2.5), then 7 (2), every other token 0; so repeats are what penalties change. */
class FixedLogitsRuntime extends FakeRuntime {
  override async step(f: StepFeeds): Promise<Float32Array> {
    const logits = (await super.step(f)).fill(0);
    for (let n = 0; n < f.logitsIndex.length; n++) {
      logits[n * V + 5] = 3;
      logits[n * V + 6] = 2.5;
      logits[n * V + 7] = 2;
    }
    return logits;
  }
}

const noPenalties = { logitBias: [], presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1 };

test('logit_bias steers greedy and sampled rows alike; +100 picks a token, -100 bans it; rows without it are untouched', async () => {
  // [3, 4] predicts 9 first (see above); with 9 banned every other logit is 0 and the lowest id, 0, wins
  const plain = spec([3, 4], 0, 5);
  const pick7 = { penalties: { ...noPenalties, logitBias: [[7, 100]] as Array<[number, number]> } };
  const ban = (ids: number[]) => ({ penalties: { ...noPenalties, logitBias: ids.map((id): [number, number] => [id, -100]) } });
  const expected = (await alone({ batchId: 10, rows: [plain], contexts: new Float32Array(1), contextCount: 0, contextWeights: new Float32Array(0), factors: [] })).texts[0];
  const c = collector();
  await new DecodeLoop(new FakeRuntime(), codec, settings, immediate).submit({
    batchId: 11,
    rows: [plain, spec([3, 4], 0, 5, pick7), spec([3, 4], 0, 5, { ...pick7, temperature: 1, seed: 3 }), spec([3, 4], 0, 5, ban([9])), spec([3, 4], 0, 5, { ...ban([9]), temperature: 1, seed: 3 })],
    contexts: new Float32Array(1), contextCount: 0, contextWeights: new Float32Array(0), factors: [],
  }, c.hooks);
  assert.ok(expected.startsWith('<9>'));
  assert.equal(c.texts[0], expected, 'a row without logit_bias gets what it gets alone');
  assert.equal(c.texts[1], '<7><7><7><7><7>', 'greedy');
  assert.equal(c.texts[2], '<7><7><7><7><7>', 'sampled: the softmax runs on the biased logits');
  assert.ok(c.texts[3].startsWith('<0>') && !c.texts[3].includes('<9>'), `greedy: ${c.texts[3]}`);
  assert.ok(!c.texts[4].includes('<9>'), `sampled: ${c.texts[4]}`);
});

test('presence, frequency and repetition penalties change repeats for greedy and sampled rows; a row without them repeats', async () => {
  const penalised = (penalties: Partial<typeof noPenalties>, over: Partial<SamplingParams> = {}, prompt = [1]) => spec(prompt, 0, 5, { penalties: { ...noPenalties, ...penalties }, ...over });
  const c = collector();
  await new DecodeLoop(new FixedLogitsRuntime(), codec, settings, immediate).submit({
    batchId: 12,
    rows: [
      spec([1], 0, 5),
      penalised({ presencePenalty: 1 }),
      penalised({ frequencyPenalty: 1 }),
      penalised({ repetitionPenalty: 2 }, {}, [5]),
      // temperature 0.01 is sampled, not greedy, yet differences of 0.5 in the logits leave it no real choice
      penalised({ frequencyPenalty: 2 }, { temperature: 0.01, seed: 1 }),
      spec([1], 0, 5, { temperature: 0.01, seed: 1 }),
    ],
    contexts: new Float32Array(1), contextCount: 0, contextWeights: new Float32Array(0), factors: [],
  }, c.hooks);
  assert.equal(c.texts[0], '<5><5><5><5><5>');
  assert.equal(c.texts[1], '<5><6><5><5><5>', 'presence: 5 loses 1 once it has come, whatever how often (ties go to the lower id)');
  assert.equal(c.texts[2], '<5><6><5><7><6>', 'frequency: 1 per time a token came');
  assert.equal(c.texts[3], '<6><7><5><5><5>', 'repetition: the prompt\'s 5 is halved from the start, then each token once it has come');
  assert.equal(c.texts[4], '<5><6><7><5><6>', 'sampled rows are penalised before their softmax');
  assert.equal(c.texts[5], '<5><5><5><5><5>');
});

test('slots are reused: more rows than slots all get what they get alone, each run within the cache', async () => {
  const batches = [batchA, batchB, batchC];
  const expected = await Promise.all(batches.map((batch) => alone(batch)));
  const runtime = new FakeRuntime(2);
  const loop = new DecodeLoop(runtime, codec, settings, immediate);
  const collectors = batches.map(() => collector());
  await Promise.all(batches.map((batch, i) => loop.submit(batch, collectors[i].hooks)));
  batches.forEach((_, i) => assert.deepEqual(collectors[i].texts, expected[i].texts));
  assert.ok(runtime.runs.every((r) => r.rows <= 2), 'never more rows than slots');
  assert.ok(runtime.moves > 0, 'a leaving row handed its slot over (the last running row moved into it)');
});

test('chunked prefill: a long prompt is prefilled within the token budget between decode steps, with the same result', async () => {
  const long = { batchId: 7, rows: [spec(Array.from({ length: 23 }, (_, i) => (i * 7) % V), 2, 3, { promptLogprobs: true, logprobs: 1 })], contexts: Float32Array.from([3]), contextCount: 1, contextWeights: Float32Array.of(1), factors: [] };
  const whole = await alone(long, { prefillChunkTokens: 256 });
  const runtime = new FakeRuntime();
  const loop = new DecodeLoop(runtime, codec, { prefillChunkTokens: 5 }, immediate);
  const running = collector();
  const joining = collector();
  let joined: Promise<unknown> | null = null;
  const onEvents = running.hooks.onEvents;
  running.hooks.onEvents = (list) => {
    onEvents(list);
    joined ??= loop.submit(long, joining.hooks);
  };
  await loop.submit({ batchId: 8, rows: [spec([4, 5], 2, 12)], contexts: Float32Array.from([9]), contextCount: 1, contextWeights: Float32Array.of(1), factors: [] }, running.hooks);
  await joined;
  assert.deepEqual(joining.texts, whole.texts);
  assert.deepEqual(joining.prompts, whole.prompts, 'prompt logprobs do not depend on the chunking');
  assert.equal(joining.prompts[0].length, 23, 'every prompt token scored (the first with a null logprob)');
  const prefills = runtime.runs.filter((r) => r.phase === 'prefill');
  assert.ok(prefills.every((r) => r.rows * r.seq <= 5), 'each prefill run within PREFILL_CHUNK_TOKENS');
  assert.ok(prefills.length >= 5, `the long prompt took several chunks (${prefills.length})`);
  const order = runtime.runs.map((r) => r.phase[0]).join('');
  assert.match(order, /(pd){4}/, `decode steps go on between the chunks: ${order}`);
});

test('prefill asks for the last position only, unless prompt logprobs are wanted', async () => {
  const runtime = new FakeRuntime();
  const batch = { batchId: 9, rows: [spec([1, 2, 3, 4, 5], 0, 1), spec([6, 7, 8], 0, 1), spec([9, 1, 2, 3], 0, 1, { promptLogprobs: true, logprobs: 0 })], contexts: new Float32Array(1), contextCount: 0, contextWeights: new Float32Array(0), factors: [] };
  await new DecodeLoop(runtime, codec, settings, immediate).submit(batch, collector().hooks);
  const prefill = runtime.runs.filter((r) => r.phase === 'prefill');
  assert.equal(prefill.length, 1);
  assert.equal(prefill[0].logits, 1 + 1 + 4, 'one position each for the plain rows, all four for the scored one');
});
