import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planSlots, STATIC_SLOT, ZERO_SLOT } from '../../src/adaptation/slots.js';

const f = (x: number) => Float32Array.from([x, x]);

test('slots: [zero, static, used batch clusters, per-request rows]; only what the batch needs', () => {
  const contexts = [f(10), f(20), f(30)];
  const plan = planSlots([
    { mode: 'none', feature: f(1), cluster: 0 },
    { mode: 'batch', feature: f(2), cluster: 2 },
    { mode: 'static', feature: f(3), cluster: 1 },
    { mode: 'request', feature: f(4), cluster: 2 },
    { mode: 'batch', feature: f(5), cluster: 2 },
    { mode: 'batch', feature: f(6), cluster: 0 },
  ], contexts, 2);
  assert.deepEqual(plan.slots, [ZERO_SLOT, 2, STATIC_SLOT, 3, 2, 4]);
  assert.equal(plan.count, 3, 'cluster 1 has no batch-mode member: no adapter for it');
  assert.deepEqual(Array.from(plan.contexts), [30, 30, 4, 4, 10, 10]);
});

test('a batch without hypernetwork rows asks for no hypernetwork run', () => {
  const plan = planSlots([{ mode: 'none', feature: f(1), cluster: 0 }, { mode: 'static', feature: f(1), cluster: 0 }], [f(1)], 2);
  assert.deepEqual(plan.slots, [0, 1]);
  assert.equal(plan.count, 0);
});
