import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseSafetensors, SafetensorsError } from '../../src/adaptation/safetensors.js';

function file(header: unknown, body: Buffer): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([length, json, body]);
}

test('F32, F16 and BF16 tensors read as float32; other tensors are listed but not converted', () => {
  const body = Buffer.alloc(4 + 2 + 2 + 4);
  body.writeFloatLE(1.5, 0);
  body.writeUInt16LE(0x3c00, 4); // F16 1.0
  body.writeUInt16LE(0xc000, 6); // BF16 -2.0
  const tensors = parseSafetensors(file({
    __metadata__: { format: 'pt' },
    a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
    h: { dtype: 'F16', shape: [1], data_offsets: [4, 6] },
    b: { dtype: 'BF16', shape: [1], data_offsets: [6, 8] },
    i: { dtype: 'I32', shape: [1], data_offsets: [8, 12] },
  }, body), 1024);
  const byName = Object.fromEntries(tensors.map((t) => [t.name, t]));
  assert.deepEqual([...byName.a.read(), ...byName.h.read(), ...byName.b.read()], [1.5, 1, -2]);
  assert.throws(() => byName.i.read(), /only F32, F16 and BF16/);
});

test('malformed files are errors, never crashes: header size, offsets outside or overlapping, wrong sizes', () => {
  const four = Buffer.alloc(8);
  const cases: Array<[Buffer, RegExp]> = [
    [Buffer.alloc(3), /shorter than/],
    [file({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, four).subarray(0, 12), /does not fit/],
    [file({ pad: 'x'.repeat(2000) }, four), /more than the 1024 accepted/],
    [file([1, 2], four), /not a JSON object/],
    [file({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, four), /inside the file/],
    [file({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 8] } }, four), /inside the file/],
    [file({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [2, 6] } }, four), /overlap/],
    [file({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, four), /no valid shape/],
  ];
  for (const [bytes, message] of cases) assert.throws(() => parseSafetensors(bytes, 1024), (e: unknown) => e instanceof SafetensorsError && message.test(e.message));
});
