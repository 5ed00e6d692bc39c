import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planSlots, STATIC_SLOT, ZERO_SLOT, type ClusteredMode } from '../../src/adaptation/slots.js';
import type { LoraFactors } from '../../src/engine/protocol.js';

const f = (x: number) => Float32Array.from([x, x]);
const factorsOf = (x: number): LoraFactors => ({ rank: 1, a: f(x), b: f(x) });
const made: string[] = [];
const make = (mode: string, context: Float32Array) => {
  made.push(`${mode}:${context[0]}`);
  return factorsOf(context[0] + 100);
};

test('slots: [zero, static, hypernetwork inputs (used batch clusters, request rows), ready-made factors]; only what the batch needs', () => {
  made.length = 0;
  const contexts = new Map<ClusteredMode, Float32Array[]>([['batch', [f(10), f(20), f(30)]], ['library', [f(40), f(50)]]]);
  const named = { id: 'mine', factors: factorsOf(7) };
  const plan = planSlots([
    { mode: 'none', feature: f(1), cluster: -1, contextTokens: 8 },
    { mode: 'batch', feature: f(2), cluster: 2, contextTokens: 8 },
    { mode: 'static', feature: f(3), cluster: -1, contextTokens: 8 },
    { mode: 'library', feature: f(4), cluster: 1, contextTokens: 8 },
    { mode: 'request', feature: f(5), cluster: -1, contextTokens: 8 },
    { mode: 'adapter', feature: f(6), cluster: -1, contextTokens: 8, adapter: named },
    { mode: 'batch', feature: f(7), cluster: 2, contextTokens: 8 },
    { mode: 'library', feature: f(8), cluster: 1, contextTokens: 8 },
    { mode: 'adapter', feature: f(9), cluster: -1, contextTokens: 8, adapter: named },
    { mode: 'batch', feature: f(10), cluster: 0, contextTokens: 8 },
  ], contexts, 2, make);
  // hypernetwork: batch cluster 2 -> 2, request -> 3, batch cluster 0 -> 4; then factors: library cluster 1 -> 5, adapter -> 6
  assert.deepEqual(plan.slots, [ZERO_SLOT, 2, STATIC_SLOT, 5, 3, 6, 2, 5, 6, 4]);
  assert.equal(plan.count, 3, 'batch cluster 1 has no member: no adapter for it');
  assert.deepEqual(Array.from(plan.contexts), [30, 30, 5, 5, 10, 10]);
  assert.deepEqual(made, ['library:50'], 'one library selection per cluster in use');
  assert.equal(plan.factors.length, 2);
  assert.equal(plan.factors[1], named.factors, 'a named adapter is passed as it is');
});

test('a batch without hypernetwork rows asks for no hypernetwork run', () => {
  const plan = planSlots([{ mode: 'none', feature: f(1), cluster: -1, contextTokens: 8 }, { mode: 'static', feature: f(1), cluster: -1, contextTokens: 8 }], new Map(), 2, make);
  assert.deepEqual(plan.slots, [0, 1]);
  assert.equal(plan.count, 0);
  assert.equal(plan.factors.length, 0);
});

test('a gate sends the contexts it does not admit to the static slot, weights the others, and reports both', () => {
  // admitted from similarity 0.25; the generated update then weighs tokens / (tokens + 8)
  const admits = (similarity: number) => similarity >= 0.25;
  const gate = { similarity: (context: Float32Array) => context[0] / 100, admits, weight: (similarity: number, tokens: number) => (admits(similarity) ? tokens / (tokens + 8) : 0) };
  const contexts = new Map<ClusteredMode, Float32Array[]>([['batch', [f(10), f(30)]], ['library', [f(5)]]]);
  const plan = planSlots([
    { mode: 'batch', feature: f(1), cluster: 0, contextTokens: 24 },
    { mode: 'batch', feature: f(2), cluster: 1, contextTokens: 24 },
    { mode: 'request', feature: f(20), cluster: -1, contextTokens: 8 },
    { mode: 'request', feature: f(40), cluster: -1, contextTokens: 8 },
    { mode: 'library', feature: f(3), cluster: 0, contextTokens: 8 },
    { mode: 'static', feature: f(4), cluster: -1, contextTokens: 8 },
    { mode: 'batch', feature: f(5), cluster: 1, contextTokens: 24 },
  ], contexts, 2, make, gate);
  assert.deepEqual(plan.slots, [STATIC_SLOT, 2, STATIC_SLOT, 3, 4, STATIC_SLOT, 2]);
  assert.equal(plan.count, 2, 'no hypernetwork input for a gated context');
  assert.deepEqual(Array.from(plan.contexts), [30, 30, 40, 40]);
  assert.deepEqual(Array.from(plan.contextWeights), [0.75, 0.5], 'one weight per hypernetwork input: its tokens / (tokens + 8)');
  assert.deepEqual(plan.similarities, [0.1, 0.3, 0.2, 0.4, null, null, 0.3], 'only hypernetwork contexts are gated (the library selects by its own centroids)');
  assert.deepEqual(plan.gated, [true, false, true, false, false, false, false]);
  assert.deepEqual(plan.dynamicWeights, [0, 0.75, 0, 0.5, null, null, 0.75]);
});

test('without a gate every generated update is whole', () => {
  const plan = planSlots([{ mode: 'request', feature: f(20), cluster: -1, contextTokens: 3 }], new Map(), 2, make);
  assert.deepEqual(Array.from(plan.contextWeights), [1]);
  assert.deepEqual(plan.dynamicWeights, [1]);
});
