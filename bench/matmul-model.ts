/** A one-node model, y = MatMul(x, w), with w a constant (as the decoder's weights are, so ONNX Runtime prepacks it). */
import { FLOAT, initializer, model, node, tensorInfo } from '../src/engine/onnx-proto.js';

export function matmulModel(inner: number, outer: number): Uint8Array {
  const weights = Buffer.alloc(inner * outer * 4);
  for (let i = 0; i < inner * outer; i++) weights.writeFloatLE(((i % 7) - 3) / 16, i * 4);
  return model({
    nodes: [node('MatMul', ['x', 'w'], ['y'])],
    initializers: [initializer('w', FLOAT, [inner, outer], weights)],
    inputs: [tensorInfo('x', FLOAT, ['m', inner])],
    outputs: [tensorInfo('y', FLOAT, ['m', outer])],
    opset: 13,
  });
}
