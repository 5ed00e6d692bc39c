import assert from 'node:assert/strict';
import { test } from 'node:test';
import { replayEquivalence } from './equivalence.js';

test('default package: ONNX Runtime logits match PyTorch (chunked prefill and decode steps over slot caches written in place, mixed clusters, padding)', async () => {
  const differences = await replayEquivalence('models/default');
  assert.ok(differences.length >= 4, 'prefill and at least three decode steps');
  for (const [step, difference] of differences.entries()) {
    assert.ok(difference < 1e-4, `step ${step}: max |Δlogit| = ${difference}`);
  }
});
