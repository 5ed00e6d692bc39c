/**
 * Reads the tensors of a `.safetensors` file (8-byte little-endian header length, a JSON header of
 * name -> {dtype, shape, data_offsets}, then the raw bytes) as float32. Hand-written because the format is this small
 * and npm has no maintained reader for Node; every offset is checked, so a malformed file is an error, never a crash.
 */
import { readFile } from 'node:fs/promises';

export interface Float32Tensor {
  shape: number[];
  data: Float32Array;
}

const BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export class SafetensorsError extends Error {}

function half(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction === 0 ? sign * Infinity : NaN;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

export function parseSafetensors(bytes: Buffer): Map<string, Float32Tensor> {
  if (bytes.byteLength < 8) throw new SafetensorsError('the file is shorter than its 8-byte header length');
  const headerLength = Number(bytes.readBigUInt64LE(0));
  if (headerLength > MAX_HEADER_BYTES || 8 + headerLength > bytes.byteLength) throw new SafetensorsError(`header length ${headerLength} does not fit the file`);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new SafetensorsError('the header is not JSON');
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) throw new SafetensorsError('the header is not a JSON object');
  const body = bytes.subarray(8 + headerLength);
  const out = new Map<string, Float32Tensor>();
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const spec = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const size = typeof spec?.dtype === 'string' ? BYTES[spec.dtype] : undefined;
    if (size === undefined) throw new SafetensorsError(`tensor ${name} has dtype ${String(spec?.dtype)}; only F32, F16 and BF16 are read`);
    const shape = spec.shape;
    const offsets = spec.data_offsets;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new SafetensorsError(`tensor ${name} has no valid shape`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) throw new SafetensorsError(`tensor ${name} has no valid data_offsets`);
    const [begin, end] = offsets as [number, number];
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    if (end < begin || end > body.byteLength || end - begin !== count * size) throw new SafetensorsError(`tensor ${name}: data_offsets [${begin}, ${end}] do not hold ${count} ${spec.dtype} values`);
    const data = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      const at = begin + i * size;
      data[i] = spec.dtype === 'F32' ? body.readFloatLE(at) : spec.dtype === 'F16' ? half(body.readUInt16LE(at)) : new Float32Array(Uint32Array.of(body.readUInt16LE(at) << 16).buffer)[0];
    }
    out.set(name, { shape: shape as number[], data });
  }
  return out;
}

export async function readSafetensors(path: string): Promise<Map<string, Float32Tensor>> {
  return parseSafetensors(await readFile(path));
}
