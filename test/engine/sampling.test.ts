import assert from 'node:assert/strict';
import { test } from 'node:test';
import { argmax, isGreedy, logSumExp, Random, SamplingScratch, sampleFromProbs, softmaxRow, tokenLogprobs, topIds, type SamplingCuts } from '../../src/engine/sampling.js';

/** The worker's path for one row: argmax when greedy, else softmax(logits / T) then the cuts and the draw. */
function sampleToken(row: Float32Array, offset: number, params: SamplingCuts, rng: Random, scratch: SamplingScratch): number {
  const V = scratch.vocabSize;
  if (isGreedy(params.temperature)) return argmax(row, offset, V);
  const probs = new Float32Array(V);
  softmaxRow(row, offset, V, params.temperature, probs, 0);
  return sampleFromProbs(probs, 0, params, rng, scratch);
}

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

/** The textbook cut: sort the whole vocabulary (most likely first, ties to the lower id), keep top_k, then top_p. */
function textbookCut(row: Float32Array, params: { temperature: number; topP: number; topK: number }): Map<number, number> {
  const n = row.length;
  let max = -Infinity;
  for (const l of row) max = Math.max(max, l);
  const probs = Array.from(row, (l) => Math.exp((l - max) / params.temperature));
  let total = probs.reduce((s, p) => s + p, 0);
  const order = Array.from({ length: n }, (_, i) => i).sort((x, y) => probs[y] - probs[x] || x - y);
  let keep = params.topK > 0 && params.topK < n ? params.topK : n;
  if (keep < n) total = order.slice(0, keep).reduce((s, i) => s + probs[i], 0);
  if (params.topP < 1) {
    let mass = 0;
    let j = 0;
    while (j < keep) {
      mass += probs[order[j]];
      j++;
      if (mass >= params.topP * total) break;
    }
    keep = Math.max(1, j);
  }
  const kept = order.slice(0, keep);
  const mass = kept.reduce((s, i) => s + probs[i], 0);
  return new Map(kept.map((i) => [i, probs[i] / mass]));
}

/** A vocabulary-sized row with a realistic spread, ties included. */
function vocabRow(size: number, seed: number, spread: number): Float32Array {
  const rng = new Random(seed);
  return Float32Array.from({ length: size }, (_, i) => (i % 97 === 0 ? 2 : Math.round((rng.next() - 0.5) * spread * 8) / 8));
}

/** Chi-square of `draws` samples against `expected` (id -> probability), pooled into bins of >= 1/bins of the mass. */
function chiSquare(row: Float32Array, params: { temperature: number; topP: number; topK: number }, expected: Map<number, number>, draws: number, seed: number) {
  const counts = new Map<number, number>();
  const rng = new Random(seed);
  const scratch = new SamplingScratch(row.length);
  // the worker's path (sampleToken) with the row's softmax computed once rather than at every draw
  const probs = new Float32Array(row.length);
  softmaxRow(row, 0, row.length, params.temperature, probs, 0);
  for (let i = 0; i < draws; i++) {
    const token = sampleFromProbs(probs, 0, params, rng, scratch);
    assert.ok(expected.has(token), `token ${token} is outside the textbook cut (${JSON.stringify(params)})`);
    counts.set(token, (counts.get(token) ?? 0) + 1);
  }
  const binCount = Math.min(20, expected.size);
  const bins: Array<{ expected: number; observed: number }> = [];
  let bin = { expected: 0, observed: 0 };
  for (const [id, p] of [...expected].sort((a, b) => b[1] - a[1] || a[0] - b[0])) {
    bin.expected += p * draws;
    bin.observed += counts.get(id) ?? 0;
    if (bin.expected >= draws / binCount) {
      bins.push(bin);
      bin = { expected: 0, observed: 0 };
    }
  }
  if (bin.expected > 0) bins.push(bin);
  return { chi2: bins.reduce((s, b) => s + (b.observed - b.expected) ** 2 / b.expected, 0), dof: bins.length - 1 };
}

/** The chi-square value exceeded with probability 0.001 (Wilson-Hilferty); 0 for a single bin. */
function critical(dof: number): number {
  if (dof === 0) return 0;
  const a = 2 / (9 * dof);
  return dof * (1 - a + 3.09 * Math.sqrt(a)) ** 3;
}

test('top_k / top_p (a binned cut, or rejection for top_p >= 0.5 alone) keep exactly the textbook set, each token with its textbook probability', () => {
  const size = 4096;
  for (const [seed, spread] of [[1, 4], [2, 12], [3, 0.5]] as const) {
    const row = vocabRow(size, seed, spread);
    for (const params of [{ temperature: 0.7, topP: 0.5, topK: 0 }, { temperature: 1, topP: 0.9, topK: 0 }, { temperature: 1, topP: 0.3, topK: 0 }, { temperature: 1, topP: 1, topK: 40 }, { temperature: 1.3, topP: 0.95, topK: 300 },
      { temperature: 1, topP: 1, topK: 1 }, { temperature: 1, topP: 1e-6, topK: 0 }]) {
      const expected = textbookCut(row, params);
      const { chi2, dof } = chiSquare(row, params, expected, 20000, seed);
      assert.ok(chi2 <= critical(dof), `seed ${seed} ${JSON.stringify(params)}: chi-square ${chi2.toFixed(1)} with ${dof} dof`);
    }
  }
});

test('a row of probabilities that are not numbers still gets a token (the sampler never loops forever)', () => {
  const size = 4096;
  const probs = new Float32Array(size).fill(Number.NaN);
  const scratch = new SamplingScratch(size);
  for (const params of [{ temperature: 1, topP: 0.9, topK: 0 }, { temperature: 1, topP: 0.3, topK: 0 }, { temperature: 1, topP: 1, topK: 0 }]) {
    const token = sampleFromProbs(probs, 0, params, new Random(3), scratch);
    assert.ok(Number.isInteger(token) && token >= 0 && token < size, `${JSON.stringify(params)}: token ${token}`);
  }
});

test('top_p sampling follows the nucleus distribution (chi-square over 40,000 draws)', () => {
  const size = 4096;
  const row = vocabRow(size, 9, 6);
  const params = { temperature: 1, topP: 0.9, topK: 0 };
  const probs = Array.from(row, (l) => Math.exp(l));
  const order = Array.from({ length: size }, (_, i) => i).sort((x, y) => probs[y] - probs[x] || x - y);
  const total = probs.reduce((s, p) => s + p, 0);
  const nucleus: number[] = [];
  let mass = 0;
  for (const id of order) {
    nucleus.push(id);
    mass += probs[id];
    if (mass >= 0.9 * total) break;
  }
  const expected = new Map(nucleus.map((id) => [id, probs[id] / mass]));
  const counts = new Map<number, number>();
  const rng = new Random(11);
  const scratch = new SamplingScratch(size);
  const n = 40000;
  for (let i = 0; i < n; i++) {
    const token = sampleToken(row, 0, params, rng, scratch);
    assert.ok(expected.has(token), `token ${token} is outside the nucleus`);
    counts.set(token, (counts.get(token) ?? 0) + 1);
  }
  // Pool the nucleus into 20 bins of similar expected mass, then a chi-square test (19 degrees of freedom).
  const bins: Array<{ expected: number; observed: number }> = [];
  let bin = { expected: 0, observed: 0 };
  for (const id of nucleus) {
    bin.expected += expected.get(id)! * n;
    bin.observed += counts.get(id) ?? 0;
    if (bin.expected >= n / 20) {
      bins.push(bin);
      bin = { expected: 0, observed: 0 };
    }
  }
  if (bin.expected > 0) bins.push(bin);
  const chi2 = bins.reduce((s, b) => s + (b.observed - b.expected) ** 2 / b.expected, 0);
  assert.ok(chi2 < critical(bins.length - 1), `chi-square ${chi2.toFixed(1)} over ${bins.length} bins`);
});
