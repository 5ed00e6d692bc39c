import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KvSlots, strideLadder } from '../../src/engine/kv-slots.js';

const shape = { layers: 2, heads: 2, headDim: 3, capacity: 5, slots: 4 };

/** The value the cache should hold for (layer, keys/values, slot owner's token at position p, head, d). */
const value = (l: number, which: number, token: number, h: number, d: number) => 1000 * l + 100 * which + 10 * token + h + d / 10;

/** A run's new keys and values ([layers, batch, heads, seq, headDim]) for the given tokens per row. */
function present(tokens: number[][], seq: number, which: number): Float32Array {
  const out = new Float32Array(shape.layers * tokens.length * shape.heads * seq * shape.headDim).fill(-7);
  for (let l = 0; l < shape.layers; l++) tokens.forEach((row, b) => row.forEach((token, t) => {
    for (let h = 0; h < shape.heads; h++) for (let d = 0; d < shape.headDim; d++) {
      out[((((l * tokens.length + b) * shape.heads + h) * seq + t) * shape.headDim) + d] = value(l, which, token, h, d);
    }
  }));
  return out;
}

/** What the cache holds for (buffer, slot, head, position, d), read through `view` at the current stride. */
function read(cache: KvSlots, buffer: number, slot: number, h: number, p: number, d: number): number {
  return cache.view(slot, 1)[buffer][(h * cache.stride + p) * shape.headDim + d];
}

/** Writes `tokens` into `slot` after `past` positions, reserving room first as a run does. */
function append(cache: KvSlots, slot: number, past: number, tokens: number[]): void {
  cache.reserve(past + tokens.length);
  cache.write(slot, present([tokens], tokens.length, 0), present([tokens], tokens.length, 1), tokens.length, [past], [tokens.length]);
}

/** Asserts that `slot` holds `tokens` at positions 0, 1, ... in every buffer. */
function assertHolds(cache: KvSlots, slot: number, tokens: number[], message = ''): void {
  for (let l = 0; l < shape.layers; l++) for (const which of [0, 1]) for (let h = 0; h < shape.heads; h++) for (let d = 0; d < shape.headDim; d++) {
    tokens.forEach((token, p) => assert.equal(read(cache, 2 * l + which, slot, h, p, d), Math.fround(value(l, which, token, h, d)), `slot ${slot} position ${p} ${message}`));
  }
}

test('a run writes only its rows\' real new positions, after each row\'s past, into its own slots', () => {
  const cache = new KvSlots(shape);
  cache.reserve(3);
  cache.write(1, present([[1, 2, 3], [4]], 3, 0), present([[1, 2, 3], [4]], 3, 1), 3, [0, 0], [3, 1]);
  for (const slot of [0, 3]) assert.ok(cache.view(slot, 1).every((buffer) => buffer.every((x) => x === 0)), `slot ${slot} untouched`);
  cache.reserve(4);
  cache.write(1, present([[5], [6]], 1, 0), present([[5], [6]], 1, 1), 1, [3, 1], [1, 1]);
  assert.equal(cache.view(1, 2).length, 2 * shape.layers);
  assertHolds(cache, 1, [1, 2, 3, 5]);
  assertHolds(cache, 2, [4, 6]);
  for (let b = 0; b < cache.buffers.length; b++) for (let h = 0; h < shape.heads; h++) {
    assert.equal(read(cache, b, 2, h, 2, 0), 0, 'padding of the shorter row is never written');
  }
});

test('move copies a row\'s cached positions to another slot and leaves the rest alone', () => {
  const cache = new KvSlots(shape);
  append(cache, 2, 0, [7, 8]);
  append(cache, 0, 0, [9, 9, 9, 9]);
  cache.move(2, 0, 2);
  assertHolds(cache, 0, [7, 8, 9], '(positions past the moved length are not cleared: masked by past_length)');
});

test('the layout is half the context until a run needs more, then grows and shrinks back in place, keeping every row\'s positions', () => {
  const cache = new KvSlots(shape);
  assert.equal(cache.stride, 3, 'half the capacity of 5, rounded up');
  append(cache, 0, 0, [1, 2, 3]);
  append(cache, 1, 0, [4, 5]);
  append(cache, 3, 0, [6]);
  assert.equal(cache.stride, 3);
  append(cache, 1, 2, [7, 8]);
  assert.equal(cache.stride, 5, 'a row needing 4 positions grows the layout to the capacity');
  assertHolds(cache, 0, [1, 2, 3]);
  assertHolds(cache, 1, [4, 5, 7, 8]);
  assertHolds(cache, 3, [6]);
  cache.trim(3);
  assert.equal(cache.stride, 5, 'no shrink while a row holds more than three quarters of the short stride');
  // every slot holds a row when the layout shrinks, so a copy in the wrong order would overwrite one
  cache.move(3, 2, 1);
  append(cache, 3, 0, [9, 10]);
  append(cache, 0, 0, [11, 12]);
  append(cache, 1, 0, [13]);
  cache.trim(2);
  assert.equal(cache.stride, 3, 'every row fits again: back to the short stride');
  assertHolds(cache, 0, [11, 12]);
  assertHolds(cache, 1, [13]);
  assertHolds(cache, 2, [6]);
  assertHolds(cache, 3, [9, 10]);
  assert.throws(() => cache.reserve(6), RangeError);
});

test('the stride ladder halves the capacity down to 128 positions (always offering half of it)', () => {
  assert.deepEqual(strideLadder(4096), [128, 256, 512, 1024, 2048, 4096]);
  assert.deepEqual(strideLadder(256), [128, 256], 'the default package: half and whole context, as before');
  assert.deepEqual(strideLadder(300), [150, 300]);
  assert.deepEqual(strideLadder(5), [3, 5]);
  assert.deepEqual(strideLadder(1), [1]);
});

test('a long cache (MAX_MODEL_LEN 1024) grows through its ladder and shrinks to the shortest stride that fits, keeping every row\'s positions', () => {
  const long = { layers: 1, heads: 2, headDim: 1, capacity: 1024, slots: 3 };
  const cache = new KvSlots(long);
  const rows: number[][] = [[], [], []];
  /** Appends n positions to slot `slot`, token values made from the slot and position. */
  const grow = (slot: number, n: number) => {
    const past = rows[slot].length;
    const tokens = Array.from({ length: n }, (_, i) => slot * 10_000 + past + i);
    const data = (which: number) => {
      const out = new Float32Array(long.heads * n);
      for (let h = 0; h < long.heads; h++) tokens.forEach((t, i) => { out[h * n + i] = t + which / 2 + h / 4; });
      return out;
    };
    cache.reserve(past + n);
    cache.write(slot, data(0), data(1), n, [past], [n]);
    rows[slot].push(...tokens);
  };
  const check = (message: string) => rows.forEach((tokens, slot) => {
    for (const which of [0, 1]) for (let h = 0; h < long.heads; h++) {
      const view = cache.view(slot, 1)[which];
      tokens.forEach((t, p) => assert.equal(view[h * cache.stride + p], t + which / 2 + h / 4, `${message}: slot ${slot} position ${p}`));
    }
  });
  assert.equal(cache.stride, 128);
  grow(0, 90);
  grow(1, 20);
  assert.equal(cache.stride, 128);
  grow(1, 200);
  assert.equal(cache.stride, 256, 'a row of 220 positions: the next stride up');
  check('after growing to 256');
  grow(2, 600);
  assert.equal(cache.stride, 1024);
  check('after growing to 1024');
  cache.trim(600);
  assert.equal(cache.stride, 1024, '600 > three quarters of 512');
  rows[2] = [];
  cache.move(2, 2, 0);
  cache.trim(300);
  assert.equal(cache.stride, 512, 'the longest row (220 positions, said to be 300) fits three quarters of 512 but not of 256');
  check('after shrinking to 512');
  cache.trim(100);
  assert.equal(cache.stride, 256, '100 positions are more than three quarters of 128');
  rows[1] = [];
  grow(1, 50); // a new, shorter row in slot 1
  cache.trim(90);
  assert.equal(cache.stride, 128);
  check('after shrinking to 128');
  assert.throws(() => cache.reserve(1025), RangeError);
});
