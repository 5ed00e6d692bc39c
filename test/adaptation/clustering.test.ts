import assert from 'node:assert/strict';
import { test } from 'node:test';
import { chooseK, clusterContexts, clusterFeatures } from '../../src/adaptation/clustering.js';

const opts = { targetClusterSize: 2, maxClusters: 4, seed: 7 };
const v = (...xs: number[]) => Float32Array.from(xs);

test('k = clamp(ceil(n / target), 1, max)', () => {
  assert.equal(chooseK(1, 8, 4), 1);
  assert.equal(chooseK(8, 8, 4), 1);
  assert.equal(chooseK(9, 8, 4), 2);
  assert.equal(chooseK(100, 8, 4), 4);
  assert.equal(chooseK(0, 8, 4), 1);
});

test('a single request is one cluster', () => {
  assert.deepEqual(clusterFeatures([v(1, 0)], opts), { assignments: [0], k: 1 });
  assert.deepEqual(clusterFeatures([], opts), { assignments: [], k: 0 });
});

test('identical points, and fewer distinct points than k, give well-formed clusters', () => {
  assert.deepEqual(clusterFeatures([v(1, 0), v(1, 0), v(1, 0), v(1, 0)], opts), { assignments: [0, 0, 0, 0], k: 1 });
  const two = clusterFeatures([v(1, 0), v(0, 1), v(1, 0), v(0, 1), v(1, 0), v(0, 1)], { ...opts, targetClusterSize: 1 });
  assert.equal(two.k, 2);
  assert.deepEqual(two.assignments, [0, 1, 0, 1, 0, 1]);
});

test('separated groups are found, numbered by first appearance, the same for the same seed', () => {
  const points = [v(1, 0, 0), v(0, 0, 1), v(0.99, 0.1, 0), v(0, 1, 0), v(0, 0.1, 0.99), v(0.1, 0.99, 0)];
  const a = clusterFeatures(points, { ...opts, targetClusterSize: 2 });
  assert.equal(a.k, 3);
  assert.deepEqual(a.assignments, [0, 1, 0, 2, 1, 2]);
  assert.deepEqual(clusterFeatures(points, { ...opts, targetClusterSize: 2 }), a);
});

test('a cluster context is the mean of its members', () => {
  const points = [v(1, 0), v(0, 1), v(3, 0)];
  const contexts = clusterContexts(points, { assignments: [0, 1, 0], k: 2 }, 2);
  assert.deepEqual(contexts.map((c) => Array.from(c)), [[2, 0], [0, 1]]);
});
