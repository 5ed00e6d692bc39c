import assert from 'node:assert/strict';
import { test } from 'node:test';
import { adaptationModesOf, REQUEST_ADAPTATION_MODES, type AdaptationMode } from '../../src/adaptation/modes.js';
import { planBatch, type Planner, type PlanRow, type PoolEntry } from '../../src/adaptation/planner.js';
import { FIRST_BATCH_ADAPTER, STATIC_ADAPTER, ZERO_ADAPTER, type LoraFactors } from '../../src/engine/protocol.js';

/** A prompt's feature is its first two ids, so a test chooses each row's feature (and so its cluster). */
const features = { dim: 2, feature: (ids: readonly number[]) => Float32Array.of(ids[0], ids[1]) };
const made: string[] = [];
const domains = {
  factors(mode: string, context: Float32Array): LoraFactors {
    made.push(`${mode}:${context[0]}`);
    return { rank: 1, a: Float32Array.of(context[0] + 100, 0), b: Float32Array.of(0, 0) };
  },
};
const planner = (gate: Planner['gate'] = null): Planner => ({ features, domains, gate });
const row = (mode: AdaptationMode, x: number, textTokens = 8, adapter?: PlanRow['adapter']): PlanRow => ({ mode, promptIds: [x, x], textTokens, adapter });
const alone = () => [];
const options = { targetClusterSize: 2, maxClusters: 4, seed: 1 };
const contextOf = (plan: ReturnType<typeof planBatch>, index: number) => Array.from(plan.adapters.contexts.subarray((index - FIRST_BATCH_ADAPTER) * 2, (index - FIRST_BATCH_ADAPTER + 1) * 2));

test('the stack: zero, static, then hypernetwork inputs (batch clusters in use, request rows), then ready-made factors; only what the batch needs', () => {
  made.length = 0;
  const named = { id: 'mine', factors: { rank: 1, a: Float32Array.of(7, 7), b: Float32Array.of(7, 7) } };
  const plan = planBatch([
    row('none', 1), row('batch', 10), row('static', 3), row('library', 40), row('request', 5), row('adapter', 6, 8, named),
    row('batch', 10), row('library', 40), row('adapter', 9, 8, named), row('batch', 30),
  ], alone, planner(), options);
  // hypernetwork: batch cluster 0 -> 2, request -> 3, batch cluster 1 -> 4; then factors: library cluster 0 -> 5, the named adapter -> 6
  assert.deepEqual(plan.rows.map((r) => r.adapterIndex), [ZERO_ADAPTER, 2, STATIC_ADAPTER, 5, 3, 6, 2, 5, 6, 4]);
  assert.equal(plan.adapters.contextCount, 3);
  assert.deepEqual(Array.from(plan.adapters.contexts), [10, 10, 5, 5, 30, 30]);
  assert.deepEqual(made, ['library:40'], 'one library selection per cluster in use');
  assert.equal(plan.adapters.factors.length, 2);
  assert.equal(plan.adapters.factors[1], named.factors, 'a named adapter is passed as it is');
  assert.deepEqual(plan.rows.map((r) => r.clusterSize), [0, 2, 0, 2, 1, 0, 2, 2, 0, 1], 'a cluster\'s members, 1 for a request row\'s own prompt, 0 without a context');
  assert.deepEqual(plan.clusterings, [{ mode: 'batch', clusters: 2, points: 3 }, { mode: 'library', clusters: 1, points: 2 }]);
});

test('a batch without hypernetwork rows asks for no hypernetwork run', () => {
  const plan = planBatch([row('none', 1), row('static', 1)], alone, planner(), options);
  assert.deepEqual(plan.rows.map((r) => r.adapterIndex), [ZERO_ADAPTER, STATIC_ADAPTER]);
  assert.equal(plan.adapters.contextCount, 0);
  assert.equal(plan.adapters.factors.length, 0);
  assert.deepEqual(plan.rows.map((r) => r.gate), [null, null]);
});

test('modes never shape each other\'s adapters: a batch row\'s cluster and context do not move whatever the other modes bring', () => {
  const batchRows = [row('batch', 10), row('batch', 11), row('batch', 50), row('batch', 52)];
  const plain = planBatch(batchRows, alone, planner(), options);
  const crowd = [row('library', 11), row('masks', 49), row('request', 10), row('library_weighted', 52), row('static', 50)];
  const mixed = planBatch([crowd[0], batchRows[0], crowd[1], batchRows[1], crowd[2], batchRows[2], crowd[3], batchRows[3], crowd[4]], (mode) => (mode === 'batch' ? [] : [{ feature: Float32Array.of(30, 30), tokens: 99 }]), planner(), options);
  const batchInMixed = [1, 3, 5, 7].map((i) => mixed.rows[i]);
  assert.deepEqual(batchInMixed.map((r) => r.cluster), plain.rows.map((r) => r.cluster));
  assert.deepEqual(batchInMixed.map((r) => r.clusteredWith), [4, 4, 4, 4], 'clustered with the batch prompts only');
  assert.deepEqual(batchInMixed.map((r) => contextOf(mixed, r.adapterIndex)), plain.rows.map((r) => contextOf(plain, r.adapterIndex)));
});

test('clustered rows are clustered with their mode\'s prompts in flight, and say what they bring to that pool', () => {
  const inFlight: PoolEntry[] = [{ feature: Float32Array.of(10, 10), tokens: 5 }, { feature: Float32Array.of(90, 90), tokens: 7 }];
  const plan = planBatch([row('batch', 10, 3), row('request', 90, 4)], (mode) => (mode === 'batch' ? inFlight : []), planner(), { ...options, targetClusterSize: 1 });
  const [batch, request] = plan.rows;
  assert.equal(batch.clusteredWith, 3);
  assert.equal(batch.clusterSize, 2, 'the in-flight prompt of the same feature shares its cluster');
  assert.deepEqual(contextOf(plan, batch.adapterIndex), [10, 10]);
  assert.deepEqual(batch.poolEntry && { feature: Array.from(batch.poolEntry.feature), tokens: batch.poolEntry.tokens }, { feature: [10, 10], tokens: 3 });
  assert.equal(request.poolEntry, null, 'only clustered modes have pools');
  assert.equal(request.clusteredWith, 2, 'not clustered: the window\'s rows');
});

test('a gate sends the contexts it does not admit to the static LoRA, weights the others by their tokens, and reports both', () => {
  // admitted from similarity 0.25; the generated update then weighs tokens / (tokens + 8)
  const admits = (similarity: number) => similarity >= 0.25;
  const gate = { similarity: (context: Float32Array) => context[0] / 100, admits, weight: (similarity: number, tokens: number) => (admits(similarity) ? tokens / (tokens + 8) : 0) };
  const plan = planBatch([
    row('batch', 10, 24), row('batch', 30, 12), row('request', 20), row('request', 40), row('library', 5), row('static', 4), row('batch', 30, 12),
  ], alone, planner(gate), options);
  assert.deepEqual(plan.rows.map((r) => r.adapterIndex), [STATIC_ADAPTER, 2, STATIC_ADAPTER, 3, 4, STATIC_ADAPTER, 2]);
  assert.equal(plan.adapters.contextCount, 2, 'no hypernetwork input for a gated context');
  assert.deepEqual(Array.from(plan.adapters.contexts), [30, 30, 40, 40]);
  assert.deepEqual(Array.from(plan.adapters.contextWeights), [0.75, 0.5], 'a cluster\'s weight counts its members\' tokens together: 24 / (24 + 8)');
  assert.deepEqual(plan.rows.map((r) => r.gate?.similarity ?? null), [0.1, 0.3, 0.2, 0.4, null, null, 0.3], 'only hypernetwork contexts are gated (the library selects by its own centroids)');
  assert.deepEqual(plan.rows.map((r) => r.gate?.gated ?? false), [true, false, true, false, false, false, false]);
  assert.deepEqual(plan.rows.map((r) => r.gate?.weight ?? null), [0, 0.75, 0, 0.5, null, null, 0.75]);
});

test('without a gate every generated update is whole', () => {
  const plan = planBatch([row('request', 20, 3)], alone, planner(), options);
  assert.deepEqual(Array.from(plan.adapters.contextWeights), [1]);
  assert.deepEqual(plan.rows[0].gate, { similarity: null, gated: false, weight: 1 });
});

test('the modes a package serves follow from its parts; a named adapter is never a requestable mode', () => {
  assert.ok(!REQUEST_ADAPTATION_MODES.includes('adapter' as never));
  assert.deepEqual(adaptationModesOf({ adaptive: null }), ['none']);
  const adaptive = {} as NonNullable<Parameters<typeof adaptationModesOf>[0]['adaptive']>;
  assert.deepEqual(adaptationModesOf({ adaptive }), ['batch', 'request', 'static', 'none']);
  assert.deepEqual(adaptationModesOf({ adaptive: { ...adaptive, masks: {} as never } }), ['batch', 'request', 'static', 'none', 'masks']);
  assert.deepEqual(adaptationModesOf({ adaptive: { ...adaptive, library: {} as never } }), ['batch', 'request', 'static', 'none', 'library', 'library_weighted']);
});
