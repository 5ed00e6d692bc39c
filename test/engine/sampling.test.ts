import assert from 'node:assert/strict';
import { test } from 'node:test';
import { argmax, logSumExp, Random, SamplingScratch, sampleToken, tokenLogprobs, topIds } from '../../src/engine/sampling.js';

const logits = Float32Array.from([1, 3, 2, 3, -1, 0.5]);
const V = logits.length;

test('Random is deterministic per seed and uniform enough', () => {
  const a = new Random(42);
  const b = new Random(42);
  const c = new Random(43);
  const xs = Array.from({ length: 1000 }, () => a.next());
  assert.deepEqual(xs.slice(0, 5), Array.from({ length: 5 }, () => b.next()));
  assert.notEqual(xs[0], c.next());
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
  assert.notEqual(new Random(2 ** 40).next(), new Random(0).next(), 'high bits of large seeds count');
});

test('temperature 0 is greedy (ties go to the lower id)', () => {
  assert.equal(argmax(logits, 0, V), 1);
  assert.equal(sampleToken(logits, 0, { temperature: 0, topP: 1, topK: 0 }, new Random(1), new SamplingScratch(V)), 1);
});

test('top_k 1 and a tiny top_p are greedy; top_k keeps only the k best', () => {
  const scratch = new SamplingScratch(V);
  for (let seed = 0; seed < 50; seed++) {
    assert.equal(sampleToken(logits, 0, { temperature: 1, topP: 1, topK: 1 }, new Random(seed), scratch), 1);
    assert.equal(sampleToken(logits, 0, { temperature: 1, topP: 1e-6, topK: 0 }, new Random(seed), scratch), 1);
    assert.ok([1, 2, 3].includes(sampleToken(logits, 0, { temperature: 1, topP: 1, topK: 3 }, new Random(seed), scratch)));
  }
});

test('sampling follows softmax(logits / T)', () => {
  const scratch = new SamplingScratch(V);
  const rng = new Random(7);
  const counts = new Array(V).fill(0);
  const n = 20000;
  for (let i = 0; i < n; i++) counts[sampleToken(logits, 0, { temperature: 1, topP: 1, topK: 0 }, rng, scratch)]++;
  const z = Array.from(logits).reduce((s, l) => s + Math.exp(l), 0);
  Array.from(logits).forEach((l, i) => assert.ok(Math.abs(counts[i] / n - Math.exp(l) / z) < 0.015, `token ${i}`));
});

test('logprobs are the log-softmax of the raw logits, with the top alternatives best first', () => {
  const lse = logSumExp(logits, 0, V);
  const lp = tokenLogprobs(logits, 0, V, 4, 3);
  assert.ok(Math.abs(lp.logprob - (-1 - lse)) < 1e-9);
  assert.deepEqual(lp.top.map(([id]) => id), [1, 3, 2]);
  assert.deepEqual(topIds(logits, 0, V, 0), []);
  assert.deepEqual(topIds(logits, 0, V, 10), [1, 3, 2, 0, 5, 4]);
  const total = Array.from(logits).reduce((s, l) => s + Math.exp(l - lse), 0);
  assert.ok(Math.abs(total - 1) < 1e-9);
});
