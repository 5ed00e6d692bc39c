/**
 * The throttle of failed authentications on a clock of its own: when an address is refused, for how long, and that
 * its table stays bounded whatever the number of addresses (test/api/auth.test.ts shows it engaging through HTTP).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_THROTTLE, FailureThrottle } from '../../src/api/auth-throttle.js';

function clocked() {
  let now = 1_000_000;
  const throttle = new FailureThrottle(DEFAULT_THROTTLE, () => now);
  return { throttle, advance: (ms: number) => { now += ms; } };
}

test('the tenth failure within a minute refuses the address for a minute; then it starts afresh', () => {
  const { throttle, advance } = clocked();
  for (let i = 0; i < 9; i++) {
    assert.equal(throttle.fail('10.0.0.1'), 0);
    advance(1000);
  }
  assert.equal(throttle.blockedFor('10.0.0.1'), 0);
  assert.equal(throttle.fail('10.0.0.1'), 60);
  assert.equal(throttle.blockedFor('10.0.0.2'), 0, 'other addresses are not refused');
  advance(59_500);
  assert.equal(throttle.blockedFor('10.0.0.1'), 1, 'Retry-After rounds up');
  advance(500);
  assert.equal(throttle.blockedFor('10.0.0.1'), 0);
  assert.equal(throttle.fail('10.0.0.1'), 0, 'a failure after the block starts a new count');
});

test('failures spread over more than a minute never add up to a block', () => {
  const { throttle, advance } = clocked();
  for (let i = 0; i < 50; i++) {
    assert.equal(throttle.fail('10.0.0.1'), 0, `failure ${i}`);
    advance(i % 9 === 8 ? 60_001 : 10);
  }
});

test('the table holds at most `addresses` entries: the address that failed longest ago is forgotten first', () => {
  let now = 0;
  const throttle = new FailureThrottle({ ...DEFAULT_THROTTLE, addresses: 100 }, () => now);
  for (let i = 0; i < 9; i++) throttle.fail('persistent');
  for (let i = 0; i < 10_000; i++) {
    throttle.fail(`10.1.${i >> 8}.${i & 255}`);
    if (i % 50 === 0) throttle.fail('persistent'); // failing again keeps it among the recent ones
    now += 1;
  }
  assert.equal(throttle.size, 100);
  assert.ok(throttle.blockedFor('persistent') > 0, 'a recently failing address keeps its count');
  assert.equal(throttle.blockedFor('10.1.0.0'), 0);
});
