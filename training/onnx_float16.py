"""Half-precision weights for an exported decoder graph: every weight matrix (and the embedding table) is stored as
float16 and every matrix product with one runs in float16; norms, softmax, RoPE, the LoRA update, the cache and the
graph's inputs and outputs stay float32. Half the weight memory, and float16 matrix products where the execution
provider has fast ones (CUDA).

torch 1.13 cannot trace a float16 model on the CPU (no half matmul kernels), so the float32 graph is rewritten
instead; the rewrite is small because the exported graph reaches every weight through a Transpose, a Gather or a
MatMul.
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_files import save_decoder


def _cast(source, target, to):
    return helper.make_node("Cast", [source], [target], to=to, name=f"{target}/cast")


def convert_to_float16(path):
    """Rewrites the graph at `path` in place; returns the files it is saved as (see onnx_files.save_decoder)."""
    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    halves = set()
    initializers = []
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and len(tensor.dims) >= 2:
            values = numpy_helper.to_array(tensor).astype(np.float16)
            initializers.append(numpy_helper.from_array(values, tensor.name))
            halves.add(tensor.name)
        else:
            initializers.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(initializers)

    # tensors that are float16 now: the weights, and what a Transpose makes of one
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in halves:
            halves.add(node.output[0])

    nodes = []
    casts = {}

    def cast(name, to):
        """One Cast per tensor and type, however many nodes read it (q, k and v read the same normed input)."""
        if (name, to) not in casts:
            casts[(name, to)] = f"{name}/{'float16' if to == TensorProto.FLOAT16 else 'float32'}"
            nodes.append(_cast(name, casts[(name, to)], to))
        return casts[(name, to)]

    for node in graph.node:
        half_inputs = [x for x in node.input if x in halves]
        if not half_inputs or node.op_type == "Transpose":
            nodes.append(node)
        elif node.op_type == "MatMul":
            inputs = [x if x in halves else cast(x, TensorProto.FLOAT16) for x in node.input]
            product = f"{node.output[0]}/float16"
            nodes.append(helper.make_node("MatMul", inputs, [product], name=node.name))
            nodes.append(_cast(product, node.output[0], TensorProto.FLOAT))
        elif node.op_type == "Gather" and node.input[0] in halves:
            rows = f"{node.output[0]}/float16"
            nodes.append(helper.make_node("Gather", [node.input[0], node.input[1]], [rows], name=node.name, axis=0))
            nodes.append(_cast(rows, node.output[0], TensorProto.FLOAT))
        else:
            inputs = [cast(x, TensorProto.FLOAT) if x in halves else x for x in node.input]
            del node.input[:]
            node.input.extend(inputs)
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    # shape inference recorded float32 types for tensors that are float16 now
    del graph.value_info[:]
    return save_decoder(model, path)
