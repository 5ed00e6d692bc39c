/**
 * Just enough of ONNX's protobuf encoding to write one-op helper models (the sampler's softmax, the
 * benchmark's MatMul) in memory: no ONNX tooling is needed at run time, and ONNX Runtime reads the bytes directly.
 * Field numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, TensorProto, ValueInfoProto).
 */
function varint(value: number): Buffer {
  const out: number[] = [];
  while (value > 0x7f) {
    out.push((value & 0x7f) | 0x80);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return Buffer.from(out);
}

const field = (number: number, bytes: Buffer) => Buffer.concat([varint((number << 3) | 2), varint(bytes.length), bytes]);
const text = (number: number, value: string) => field(number, Buffer.from(value, 'utf8'));
const integer = (number: number, value: number) => Buffer.concat([varint(number << 3), varint(value)]);

export const FLOAT = 1;

/** A graph input or output: element type and dimensions (strings are symbolic). */
export function tensorInfo(name: string, elemType: number, dims: Array<string | number>): Buffer {
  const shape = Buffer.concat(dims.map((d) => field(1, typeof d === 'string' ? text(2, d) : integer(1, d))));
  const tensorType = Buffer.concat([integer(1, elemType), field(2, shape)]);
  return Buffer.concat([text(1, name), field(2, field(1, tensorType))]);
}

/** A constant tensor (initializer) from its raw little-endian bytes. */
export function initializer(name: string, elemType: number, dims: number[], raw: Buffer): Buffer {
  return Buffer.concat([...dims.map((d) => integer(1, d)), integer(2, elemType), text(8, name), field(9, raw)]);
}

/** A node; integer attributes only (enough for axis / largest / sorted). */
export function node(op: string, inputs: string[], outputs: string[], attributes: Record<string, number> = {}): Buffer {
  const attrs = Object.entries(attributes).map(([name, value]) => {
    // AttributeProto: name (1), i (3), type (20) = INT (2)
    const negative = value < 0;
    const encoded = negative ? Buffer.concat([varint(3 << 3), encodeNegative(value)]) : integer(3, value);
    return field(5, Buffer.concat([text(1, name), encoded, integer(20, 2)]));
  });
  return Buffer.concat([...inputs.map((i) => text(1, i)), ...outputs.map((o) => text(2, o)), text(4, op), ...attrs]);
}

/** A negative int64 as a 10-byte two's-complement varint. */
function encodeNegative(value: number): Buffer {
  let big = BigInt.asUintN(64, BigInt(value));
  const out: number[] = [];
  while (big > 0x7fn) {
    out.push(Number(big & 0x7fn) | 0x80);
    big >>= 7n;
  }
  out.push(Number(big));
  return Buffer.from(out);
}

export interface GraphSpec {
  nodes: Buffer[];
  initializers?: Buffer[];
  inputs: Buffer[];
  outputs: Buffer[];
  opset: number;
}

/** The model bytes (IR version 8, default domain at `opset`). */
export function model(spec: GraphSpec): Uint8Array {
  const graph = Buffer.concat([
    ...spec.nodes.map((n) => field(1, n)),
    text(2, 'graph'),
    ...(spec.initializers ?? []).map((t) => field(5, t)),
    ...spec.inputs.map((i) => field(11, i)),
    ...spec.outputs.map((o) => field(12, o)),
  ]);
  return new Uint8Array(Buffer.concat([integer(1, 8), field(7, graph), field(8, integer(2, spec.opset))]));
}
