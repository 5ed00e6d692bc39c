/**
 * Reads a `.safetensors` file (8-byte little-endian header length, a JSON header of name -> {dtype, shape,
 * data_offsets}, then the raw bytes). Hand-written because the format is this small and npm has no maintained reader
 * for Node. Bytes come from a ByteSource (a file handle), never as a whole file: the 8-byte length is checked before
 * the header is read, the header is parsed and checked (offsets inside the data, no overlaps) before any tensor, and
 * a tensor's bytes are read only when it is asked for, so a bad or oversized file costs at most its header.
 */
const BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

export class SafetensorsError extends Error {}

/** Random access to a file's bytes: `read` gives exactly `length` bytes at `position`, or throws. */
export interface ByteSource {
  readonly size: number;
  read(position: number, length: number): Promise<Buffer>;
}

export interface TensorEntry {
  name: string;
  dtype: string;
  shape: number[];
  /** Reads its bytes from the source and gives the values as float32 (F32, F16 and BF16 only). */
  read(): Promise<Float32Array>;
}

function half(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction === 0 ? sign * Infinity : NaN;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

function decode(bytes: Buffer, dtype: string, count: number, size: number): Float32Array {
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const at = i * size;
    data[i] = dtype === 'F32' ? bytes.readFloatLE(at) : dtype === 'F16' ? half(bytes.readUInt16LE(at)) : new Float32Array(Uint32Array.of(bytes.readUInt16LE(at) << 16).buffer)[0];
  }
  return data;
}

/** The tensors of the safetensors file behind `source`, reading only its header (at most `maxHeaderBytes`). */
export async function readSafetensors(source: ByteSource, maxHeaderBytes: number): Promise<TensorEntry[]> {
  if (source.size < 8) throw new SafetensorsError('the file is shorter than its 8-byte header length');
  const headerLength = Number((await source.read(0, 8)).readBigUInt64LE(0));
  if (headerLength > maxHeaderBytes) throw new SafetensorsError(`its header is ${headerLength} bytes, more than the ${maxHeaderBytes} accepted`);
  if (8 + headerLength > source.size) throw new SafetensorsError(`header length ${headerLength} does not fit the file`);
  let header: unknown;
  try {
    header = JSON.parse((await source.read(8, headerLength)).toString('utf8'));
  } catch (error) {
    if (!(error instanceof SyntaxError)) throw error;
    throw new SafetensorsError('the header is not JSON');
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) throw new SafetensorsError('the header is not a JSON object');
  const bodyStart = 8 + headerLength;
  const bodyLength = source.size - bodyStart;
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
    if (end < begin || end > bodyLength || (size !== undefined && end - begin !== count * size)) {
      throw new SafetensorsError(`tensor ${name}: data_offsets [${begin}, ${end}] do not hold its ${count} ${dtype} values inside the file`);
    }
    const read = async (): Promise<Float32Array> => {
      if (size === undefined) throw new SafetensorsError(`tensor ${name} has dtype ${dtype}; only F32, F16 and BF16 are read`);
      return decode(await source.read(bodyStart + begin, end - begin), dtype, count, size);
    };
    entries.push({ name, dtype, shape: shape as number[], read, begin, end });
  }
  const ordered = [...entries].sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < ordered.length; i++) {
    if (ordered[i].begin < ordered[i - 1].end) throw new SafetensorsError(`tensors ${ordered[i - 1].name} and ${ordered[i].name} overlap`);
  }
  return entries.map(({ name, dtype, shape, read }) => ({ name, dtype, shape, read }));
}
