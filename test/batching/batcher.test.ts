import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WindowBatcher } from '../../src/batching/batcher.js';
import { BoundedQueue } from '../../src/batching/queue.js';

interface Item { rows: number; arrivedAt: number; name: string }
const item = (name: string, rows = 1): Item => ({ name, rows, arrivedAt: performance.now() });
const names = (batch: Item[] | null) => batch?.map((i) => i.name);

test('a window closes after max wait and takes what arrived in it', async () => {
  const q = new BoundedQueue<Item>(100);
  const batcher = new WindowBatcher(q, { maxBatchSize: 10, maxWaitMs: 60 });
  const started = performance.now();
  q.push(item('a'));
  setTimeout(() => q.push(item('b')), 10);
  const batch = await batcher.next();
  assert.deepEqual(names(batch), ['a', 'b']);
  assert.ok(performance.now() - started >= 55, 'waited for the window');
});

test('a full batch leaves at once; whole requests only, up to max batch size', async () => {
  const q = new BoundedQueue<Item>(100);
  const batcher = new WindowBatcher(q, { maxBatchSize: 4, maxWaitMs: 10_000 });
  q.push(item('a', 2));
  q.push(item('b', 1));
  q.push(item('c', 2));
  const started = performance.now();
  assert.deepEqual(names(await batcher.next()), ['a', 'b']);
  assert.ok(performance.now() - started < 1000);
  q.push(item('d', 2));
  assert.deepEqual(names(await batcher.next()), ['c', 'd']);
});

test('requests that already waited past the window leave without waiting more', async () => {
  const q = new BoundedQueue<Item>(100);
  const batcher = new WindowBatcher(q, { maxBatchSize: 10, maxWaitMs: 50 });
  q.push({ name: 'old', rows: 1, arrivedAt: performance.now() - 100 });
  const started = performance.now();
  assert.deepEqual(names(await batcher.next()), ['old']);
  assert.ok(performance.now() - started < 30);
});

test('next() returns null once closed and drained', async () => {
  const q = new BoundedQueue<Item>(100);
  const batcher = new WindowBatcher(q, { maxBatchSize: 10, maxWaitMs: 0 });
  q.push(item('last'));
  q.close();
  assert.deepEqual(names(await batcher.next()), ['last']);
  assert.equal(await batcher.next(), null);
});

test('little free room in the engine does not close the window early (batches stay batches under load)', async () => {
  const q = new BoundedQueue<Item>(100);
  const batcher = new WindowBatcher(q, { maxBatchSize: 8, maxWaitMs: 60 });
  let room = 1;
  q.push(item('a'));
  setTimeout(() => {
    q.push(item('b'));
    q.push(item('c'));
    room = 3;
  }, 15);
  const started = performance.now();
  assert.deepEqual(names(await batcher.next(() => room)), ['a', 'b', 'c']);
  assert.ok(performance.now() - started >= 55, 'the window stayed open for max wait');
});

test('an idle engine takes the first request at once; a busy one waits for the window', async () => {
  const q = new BoundedQueue<Item>(100);
  const batcher = new WindowBatcher(q, { maxBatchSize: 10, maxWaitMs: 200 });
  let idle = true;
  let started = performance.now();
  q.push(item('a'));
  assert.deepEqual(names(await batcher.next(undefined, () => idle)), ['a']);
  assert.ok(performance.now() - started < 50, 'no window wait while idle');
  idle = false;
  started = performance.now();
  q.push(item('b'));
  setTimeout(() => q.push(item('c')), 20);
  assert.deepEqual(names(await batcher.next(undefined, () => idle)), ['b', 'c']);
  assert.ok(performance.now() - started >= 190, 'a busy engine: the window stays open');
});
