import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TextTracker } from '../../src/engine/stopping.js';

/** A toy vocabulary: id -> UTF-8 bytes; decoding joins the bytes like a byte-level BPE. */
const VOCAB: Record<number, number[]> = {
  1: [...Buffer.from('Hello')], 2: [...Buffer.from(' wor')], 3: [...Buffer.from('ld')], 4: [...Buffer.from('\n\n')],
  5: [0xe6], 6: [0x97, 0xa5], 7: [...Buffer.from('END')], 8: [...Buffer.from('E')], 9: [...Buffer.from('ND!')],
};
const bytes = (id: number) => Uint8Array.from(VOCAB[id]);

function run(ids: number[], stop: string[]) {
  const tracker = new TextTracker(bytes, stop);
  const deltas: string[] = [];
  let stopped = false;
  for (const id of ids) {
    const r = tracker.push(id);
    deltas.push(r.delta);
    if (r.stopped) {
      stopped = true;
      break;
    }
  }
  if (!stopped) deltas.push(tracker.flush());
  return { deltas, text: deltas.join(''), stopped, final: tracker.text };
}

test('without stop strings, text is released token by token', () => {
  const r = run([1, 2, 3], []);
  assert.deepEqual(r.deltas, ['Hello', ' wor', 'ld', '']);
  assert.equal(r.final, 'Hello world');
});

test('a stop string ends the text before it, also across tokens', () => {
  assert.deepEqual(run([1, 2, 3, 4, 1], ['\n\n']), { deltas: ['Hello', ' wor', 'ld', ''], text: 'Hello world', stopped: true, final: 'Hello world' });
  const across = run([1, 8, 9], ['END']);
  assert.equal(across.text, 'Hello');
  assert.ok(across.stopped);
  assert.equal(run([1, 2, 3], ['o w']).text, 'Hell');
});

test('a tail that may still become a stop string is held back, then released', () => {
  const r = run([1, 8, 1], ['END']);
  assert.deepEqual(r.deltas, ['Hello', '', 'EHello', '']);
  assert.equal(r.final, 'HelloEHello');
  assert.equal(r.stopped, false);
});

test('an unfinished UTF-8 character is held back until complete', () => {
  const r = run([1, 5, 6], []);
  assert.deepEqual(r.deltas, ['Hello', '', '日', '']);
  assert.equal(r.final, 'Hello日');
});

test('invalid bytes become U+FFFD as in a whole decode; an unfinished character at the end is flushed as one', () => {
  const r = run([1, 6, 3, 5], []);
  assert.equal(r.final, Buffer.from([...VOCAB[1], ...VOCAB[6], ...VOCAB[3], ...VOCAB[5]]).toString('utf8'));
  assert.deepEqual(r.deltas, ['Hello', '\uFFFD\uFFFD', 'ld', '', '\uFFFD']);
});
