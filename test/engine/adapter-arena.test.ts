import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AdapterArena } from '../../src/engine/adapter-arena.js';
import type { AdapterPart } from '../../src/engine/decode-loop.js';
import { FIRST_BATCH_ADAPTER, STATIC_ADAPTER } from '../../src/engine/protocol.js';

const D = 3;
const V = 5;

/** `count` adapters of `rank` whose every value is `value + k` (k: the adapter within the part). */
function part(count: number, rank: number, value: number): AdapterPart {
  const a = new Float32Array(count * rank * D);
  const b = new Float32Array(count * V * rank);
  for (let k = 0; k < count; k++) {
    a.fill(value + k, k * rank * D, (k + 1) * rank * D);
    b.fill(value + k, k * V * rank, (k + 1) * V * rank);
  }
  return { count, rank, a, b };
}

/** The update B A of the adapter at stack index `index`, as a [V, D] matrix: what the decoder computes from the buffers. */
function update(arena: AdapterArena, index: number): number[] {
  const R = arena.rank;
  const out: number[] = [];
  for (let v = 0; v < V; v++) {
    for (let d = 0; d < D; d++) {
      let sum = 0;
      for (let j = 0; j < R; j++) sum += arena.b[(index * V + v) * R + j] * arena.a[(index * R + j) * D + d];
      out.push(sum);
    }
  }
  return out;
}

const expected = (rank: number, value: number) => new Array(V * D).fill(rank * value * value);

test('batches take free ranges of entries and give them back; nothing live moves', () => {
  const arena = new AdapterArena(D, V, part(1, 2, 1), 4);
  assert.deepEqual(update(arena, STATIC_ADAPTER), expected(2, 1), 'the static LoRA');
  const first = arena.place([part(2, 2, 3)]);
  assert.equal(first, FIRST_BATCH_ADAPTER);
  const second = arena.place([part(1, 2, 7)]);
  assert.equal(second, FIRST_BATCH_ADAPTER + 2);
  assert.equal(arena.place([part(1, 2, 8)]), FIRST_BATCH_ADAPTER + 3);
  assert.ok(arena.capacity > 4, "the buffers grew past their first capacity");
  arena.release(first);
  const third = arena.place([part(1, 2, 9)]);
  assert.equal(third, first, 'a freed range is reused');
  assert.deepEqual(update(arena, second), expected(2, 7));
  assert.deepEqual(update(arena, third), expected(2, 9));
});

test('a higher rank widens every entry, zero-padded (same updates); the rank shrinks back when it leaves', () => {
  const arena = new AdapterArena(D, V, part(1, 2, 1));
  const low = arena.place([part(1, 2, 3)]);
  const high = arena.place([part(1, 4, 5), part(1, 1, 2)]);
  assert.equal(arena.rank, 4);
  assert.deepEqual(update(arena, STATIC_ADAPTER), expected(2, 1));
  assert.deepEqual(update(arena, low), expected(2, 3));
  assert.deepEqual(update(arena, high), expected(4, 5));
  assert.deepEqual(update(arena, high + 1), expected(1, 2), 'a rank-1 part among rank-4 ones keeps its own update');
  arena.release(high);
  assert.equal(arena.rank, 2);
  assert.deepEqual(update(arena, low), expected(2, 3));
  assert.deepEqual(update(arena, STATIC_ADAPTER), expected(2, 1));
});
