/**
 * Reads a `.safetensors` file (8-byte little-endian header length, a JSON header of name -> {dtype, shape,
 * data_offsets}, then the raw bytes). Hand-written because the format is this small and npm has no maintained reader
 * for Node. The header is parsed and checked first (offsets inside the data, no overlaps); tensor values are converted
 * to float32 only for the tensors asked for, so a file with other large tensors costs no conversion.
 */
const BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

export class SafetensorsError extends Error {}

export interface TensorEntry {
  name: string;
  dtype: string;
  shape: number[];
  /** The values as float32 (F32, F16 and BF16 only). */
  read(): Float32Array;
}

function half(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction === 0 ? sign * Infinity : NaN;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** The tensors of a safetensors file held in `bytes`; the header may be at most `maxHeaderBytes`. */
export function parseSafetensors(bytes: Buffer, maxHeaderBytes: number): TensorEntry[] {
  if (bytes.byteLength < 8) throw new SafetensorsError('the file is shorter than its 8-byte header length');
  const headerLength = Number(bytes.readBigUInt64LE(0));
  if (headerLength > maxHeaderBytes) throw new SafetensorsError(`its header is ${headerLength} bytes, more than the ${maxHeaderBytes} accepted`);
  if (8 + headerLength > bytes.byteLength) throw new SafetensorsError(`header length ${headerLength} does not fit the file`);
  let header: unknown;
  try {
    header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  } catch {
    throw new SafetensorsError('the header is not JSON');
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) throw new SafetensorsError('the header is not a JSON object');
  const body = bytes.subarray(8 + headerLength);
  const entries: Array<TensorEntry & { begin: number; end: number }> = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const spec = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    const dtype = typeof spec?.dtype === 'string' ? spec.dtype : String(spec?.dtype);
    const shape = spec?.shape;
    const offsets = spec?.data_offsets;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new SafetensorsError(`tensor ${name} has no valid shape`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) throw new SafetensorsError(`tensor ${name} has no valid data_offsets`);
    const [begin, end] = offsets as [number, number];
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    const size = BYTES[dtype];
    if (end < begin || end > body.byteLength || (size !== undefined && end - begin !== count * size)) {
      throw new SafetensorsError(`tensor ${name}: data_offsets [${begin}, ${end}] do not hold its ${count} ${dtype} values inside the file`);
    }
    const read = (): Float32Array => {
      if (size === undefined) throw new SafetensorsError(`tensor ${name} has dtype ${dtype}; only F32, F16 and BF16 are read`);
      const data = new Float32Array(count);
      for (let i = 0; i < count; i++) {
        const at = begin + i * size;
        data[i] = dtype === 'F32' ? body.readFloatLE(at) : dtype === 'F16' ? half(body.readUInt16LE(at)) : new Float32Array(Uint32Array.of(body.readUInt16LE(at) << 16).buffer)[0];
      }
      return data;
    };
    entries.push({ name, dtype, shape: shape as number[], read, begin, end });
  }
  const ordered = [...entries].sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < ordered.length; i++) {
    if (ordered[i].begin < ordered[i - 1].end) throw new SafetensorsError(`tensors ${ordered[i - 1].name} and ${ordered[i].name} overlap`);
  }
  return entries;
}
