import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readSafetensors, SafetensorsError, type ByteSource } from '../../src/adaptation/safetensors.js';

function file(header: unknown, body: Buffer): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([length, json, body]);
}

/** `bytes` as a ByteSource of `size` bytes (beyond `bytes`: zeros never stored), counting what is read. */
function counted(bytes: Buffer, size = bytes.byteLength): ByteSource & { bytesRead: number } {
  const source = {
    size,
    bytesRead: 0,
    async read(position: number, length: number) {
      if (position + length > size) throw new Error('read past the end');
      source.bytesRead += length;
      const out = Buffer.alloc(length);
      bytes.copy(out, 0, Math.min(position, bytes.byteLength), Math.min(position + length, bytes.byteLength));
      return out;
    },
  };
  return source;
}

test('F32, F16 and BF16 tensors read as float32; other tensors are listed but not converted', async () => {
  const body = Buffer.alloc(4 + 2 + 2 + 4);
  body.writeFloatLE(1.5, 0);
  body.writeUInt16LE(0x3c00, 4); // F16 1.0
  body.writeUInt16LE(0xc000, 6); // BF16 -2.0
  const tensors = await readSafetensors(counted(file({
    __metadata__: { format: 'pt' },
    a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
    h: { dtype: 'F16', shape: [1], data_offsets: [4, 6] },
    b: { dtype: 'BF16', shape: [1], data_offsets: [6, 8] },
    i: { dtype: 'I32', shape: [1], data_offsets: [8, 12] },
  }, body)), 1024);
  const byName = Object.fromEntries(tensors.map((t) => [t.name, t]));
  assert.deepEqual([...await byName.a.read(), ...await byName.h.read(), ...await byName.b.read()], [1.5, 1, -2]);
  await assert.rejects(byName.i.read(), /only F32, F16 and BF16/);
});

test('malformed files are errors, never crashes: header size, offsets outside or overlapping, wrong sizes', async () => {
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
  for (const [bytes, message] of cases) await assert.rejects(readSafetensors(counted(bytes), 1024), (e: unknown) => e instanceof SafetensorsError && message.test(e.message));
});

test('only the 8-byte length, the header and the tensors asked for are read, however large the file', async () => {
  const size = 60 * 1024 * 1024;
  // a bad file: its first 8 bytes are text, read as a header length far over the limit; nothing more is read
  const text = counted(Buffer.from('root:x:0:0:root:/root:/bin/bash\n'), size);
  await assert.rejects(readSafetensors(text, 1024 * 1024), /more than the 1048576 accepted/);
  assert.equal(text.bytesRead, 8);

  // a valid header before 60 MiB of another tensor: the header is all that is read until a tensor is asked for
  const small = 16;
  const big = 15 * 2 ** 20;
  const head = file({ small: { dtype: 'F32', shape: [4], data_offsets: [0, small] }, big: { dtype: 'F32', shape: [big], data_offsets: [small, small + 4 * big] } }, Buffer.alloc(0));
  const valid = counted(head, head.byteLength + small + 4 * big);
  const tensors = await readSafetensors(valid, 1024 * 1024);
  assert.equal(valid.bytesRead, head.byteLength);
  await tensors.find((t) => t.name === 'small')!.read();
  assert.equal(valid.bytesRead, head.byteLength + small, 'one small tensor costs its own bytes only');
});
