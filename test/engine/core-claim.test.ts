import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CoreClaim } from '../../src/engine/core-claim.js';

const policy = { shortestPauseMs: 5, longestPauseMs: 40, budgetMs: 60, share: 0.2 };

test('without a claim the inference thread does not wait', () => {
  const claim = new CoreClaim(undefined, policy);
  assert.equal(claim.waitOut(), 0);
  assert.equal(claim.pausedSeconds, 0);
});

test('a claim holds the inference thread until it ends, and the pause is counted', () => {
  const claim = new CoreClaim(undefined, policy);
  claim.claim(25);
  const waited = claim.waitOut();
  assert.ok(waited >= 20 && waited < 40 + 30, `waited ${waited} ms for a 25 ms claim`);
  assert.ok(claim.pausedSeconds >= 0.02, `counted ${claim.pausedSeconds} s`);
});

test('claims that never end take at most the longest pause at a time, paid from a budget that refills with time', async () => {
  const claim = new CoreClaim(undefined, policy);
  claim.claim(60_000);
  const first = claim.waitOut();
  assert.ok(first >= 35 && first < 40 + 60, `the first pause lasted ${first} ms with a 40 ms bound`);
  const second = claim.waitOut();
  assert.ok(second < 30, `the second pause took what was left of the 60 ms budget, ${second} ms`);
  assert.ok(claim.waitOut() < 5, 'the budget is spent: the thread runs');
  await new Promise((r) => setTimeout(r, 150)); // refills 150 * 0.2 = 30 ms
  const refilled = claim.waitOut();
  assert.ok(refilled >= 20 && refilled < 40 + 30, `after 150 ms the thread may pause again, ${refilled} ms`);
});
