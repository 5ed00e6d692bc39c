import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KvSlots } from '../../src/engine/kv-slots.js';

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

test('a run writes only its rows\' real new positions, after each row\'s past, into its own slots', () => {
  const cache = new KvSlots(shape);
  cache.write(1, present([[1, 2, 3], [4]], 3, 0), present([[1, 2, 3], [4]], 3, 1), 3, [0, 0], [3, 1]);
  cache.write(1, present([[5], [6]], 1, 0), present([[5], [6]], 1, 1), 1, [3, 1], [1, 1]);
  const views = cache.view(1, 2);
  assert.equal(views.length, 2 * shape.layers);
  const at = (buffer: number, slotInView: number, h: number, p: number, d: number) => views[buffer][((slotInView * shape.heads + h) * shape.capacity + p) * shape.headDim + d];
  for (let l = 0; l < shape.layers; l++) for (const which of [0, 1]) for (let h = 0; h < shape.heads; h++) for (let d = 0; d < shape.headDim; d++) {
    [1, 2, 3, 5].forEach((token, p) => assert.equal(at(2 * l + which, 0, h, p, d), Math.fround(value(l, which, token, h, d))));
    [4, 6].forEach((token, p) => assert.equal(at(2 * l + which, 1, h, p, d), Math.fround(value(l, which, token, h, d))));
    assert.equal(at(2 * l + which, 1, h, 2, d), 0, 'padding of the shorter row is never written');
  }
  for (const slot of [0, 3]) assert.ok(cache.view(slot, 1).every((buffer) => buffer.every((x) => x === 0)), `slot ${slot} untouched`);
});

test('move copies a row\'s cached positions to another slot and leaves the rest alone', () => {
  const cache = new KvSlots(shape);
  cache.write(2, present([[7, 8]], 2, 0), present([[7, 8]], 2, 1), 2, [0], [2]);
  cache.write(0, present([[9, 9, 9, 9]], 4, 0), present([[9, 9, 9, 9]], 4, 1), 4, [0], [4]);
  cache.move(2, 0, 2);
  for (let b = 0; b < cache.buffers.length; b++) {
    const l = Math.floor(b / 2);
    const which = b % 2;
    const slot0 = cache.view(0, 1)[b];
    for (let h = 0; h < shape.heads; h++) {
      const row = (p: number, d: number) => slot0[(h * shape.capacity + p) * shape.headDim + d];
      assert.equal(row(0, 1), Math.fround(value(l, which, 7, h, 1)));
      assert.equal(row(1, 2), Math.fround(value(l, which, 8, h, 2)));
      assert.equal(row(2, 0), Math.fround(value(l, which, 9, h, 0)), 'positions past the moved length are not cleared (masked by past_length)');
    }
  }
});
