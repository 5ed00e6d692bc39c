import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FeatureExtractor } from '../../src/adaptation/features.js';

// vocab 4, dim 2: id 0 is BOS (excluded)
const table = Float32Array.from([9, 9, 3, 0, 0, 4, 1, 1]);
const fx = new FeatureExtractor(table, 4, 2, [0]);

test('the feature is the L2-normalised mean embedding, BOS excluded', () => {
  const f = fx.feature([0, 1, 2]); // mean of (3,0) and (0,4) = (1.5, 2) -> (0.6, 0.8)
  assert.ok(Math.abs(f[0] - 0.6) < 1e-6 && Math.abs(f[1] - 0.8) < 1e-6);
  assert.deepEqual(Array.from(fx.feature([0, 1, 2])), Array.from(fx.feature([1, 2])));
});

test('an empty prompt (only BOS) has a zero feature', () => {
  assert.deepEqual(Array.from(fx.feature([0])), [0, 0]);
  assert.deepEqual(Array.from(fx.feature([])), [0, 0]);
});

test('a table of the wrong size is refused', () => {
  assert.throws(() => new FeatureExtractor(new Float32Array(5), 4, 2, []), /expected 4 x 2/);
});
