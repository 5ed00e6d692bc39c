/**
 * A one-node ONNX model, y = MatMul(x, w) with both operands as inputs, written as protobuf bytes here so that the
 * benchmark needs no Python or ONNX tooling to measure ONNX Runtime's MatMul throughput.
 */
function varint(value: number): number[] {
  const out: number[] = [];
  while (value > 0x7f) {
    out.push((value & 0x7f) | 0x80);
    value >>>= 7;
  }
  out.push(value);
  return out;
}

const field = (number: number, bytes: number[]) => [...varint((number << 3) | 2), ...varint(bytes.length), ...bytes];
const text = (number: number, value: string) => field(number, [...Buffer.from(value, 'utf8')]);
const integer = (number: number, value: number) => [...varint(number << 3), ...varint(value)];

/** ValueInfoProto of a float tensor with symbolic dimensions. */
function floatTensor(name: string, dims: string[]): number[] {
  const shape = dims.flatMap((d) => field(1, text(2, d))); // TensorShapeProto.dim { dim_param }
  const tensorType = [...integer(1, 1), ...field(2, shape)]; // elem_type FLOAT, shape
  return [...text(1, name), ...field(2, field(1, tensorType))]; // name, type { tensor_type }
}

export function matmulModel(): Uint8Array {
  const node = [...text(1, 'x'), ...text(1, 'w'), ...text(2, 'y'), ...text(4, 'MatMul')];
  const graph = [
    ...field(1, node),
    ...text(2, 'matmul'),
    ...field(11, floatTensor('x', ['m', 'k'])),
    ...field(11, floatTensor('w', ['k', 'n'])),
    ...field(12, floatTensor('y', ['m', 'n'])),
  ];
  const opset = integer(2, 13); // OperatorSetIdProto { version: 13 } (default domain)
  return Uint8Array.from([...integer(1, 8), ...field(7, graph), ...field(8, opset)]); // ir_version 8, graph, opset_import
}
