"""Int8 weights for an exported decoder graph, for the CPU: every product with a weight matrix becomes ONNX Runtime's
`DynamicQuantizeMatMul` (com.microsoft) over int8 weights with one float32 scale per output column (symmetric,
max |w| / 63, so |q| <= 63: 7 bits), the activations quantized to uint8 per product at run time. The embedding lookup, norms, attention,
RoPE, the LoRA update, the cache and the graph's inputs and outputs stay float32, so the decoder's interface is the
same. A quarter of the weights' bytes, and on 2 AVX2 cores (onnxruntime-node 1.30, SmolLM2-135M's shapes, random
weights) products 1.4-2.6x faster for one row and 1.7-4x (up to 8x) for 32 rows than the float32 MatMul, at about 2 %
relative error per product. `MatMulNBits` was measured too and lost at 32 rows (8 bits: 0.5-0.9x the float32 MatMul;
4 bits: 0.2-1x), see docs/own-model.md.

The exported graph reaches each weight matrix through a Transpose of an initializer (the tied LM head reaches the
embedding table that way, which the Gather keeps reading in float32), and the trained default package's query
projection through a Transpose of the weight times a constant (the 1 / sqrt(head_dim) folded into it): the rewrite
evaluates such constant chains, quantizes the [K, N] matrix the MatMul reads, and drops what nothing reads any more.

Why 7 bits: ONNX Runtime's AVX2 kernel for uint8 activations times int8 weights (MLAS, vpmaddubsw) adds two
products into a signed 16-bit lane and saturates there; with weights over the full int8 range (255 * 127 * 2 > 32767)
the sums clip and the logits land 3-5x further from float32 than the rounding alone puts them. Weights within
[-63, 63] cannot overflow the lane (255 * 63 * 2 < 32767); the extra rounding error of one bit less is far smaller
than the clipping it removes.
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_files import save_decoder

MS_DOMAIN = "com.microsoft"
# Ops through which a weight's value is computed from constants alone (folded here, before quantizing).
FOLDABLE = {"Transpose", "Mul", "Div", "Cast", "Identity"}
# Values kept once evaluated: small constants (a weight matrix is evaluated once, by the product that reads it).
CACHED_BYTES = 1 << 20
# Largest |q|: keeps ONNX Runtime's AVX2 u8 x s8 pair sums inside int16 (see the module's docstring).
WEIGHT_LIMIT = 63


def quantize_columns(w):
    """Symmetric per-output-column int8 of a [K, N] float matrix: (q int8 [K, N] within +-WEIGHT_LIMIT, scale float32
    [N]), w ≈ q * scale."""
    w = np.asarray(w, dtype=np.float32)
    scale = np.abs(w).max(axis=0) / WEIGHT_LIMIT
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -WEIGHT_LIMIT, WEIGHT_LIMIT).astype(np.int8)
    return q, scale


class _Constants:
    """Values of the tensors that depend on initializers and Constant nodes only, evaluated on demand."""

    def __init__(self, graph):
        self.initializers = {t.name: t for t in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.graph_inputs = {i.name for i in graph.input}
        self.cache = {}
        self.failed = set()

    def value(self, name):
        """The numpy value of tensor `name`, or None when it depends on a graph input or on an op not folded here."""
        if name in self.cache:
            return self.cache[name]
        if name in self.failed:
            return None
        result = None
        if name in self.initializers and name not in self.graph_inputs:
            result = numpy_helper.to_array(self.initializers[name])
        elif name in self.producer:
            result = self._evaluate(self.producer[name])
        if result is None:
            self.failed.add(name)
        elif result.nbytes <= CACHED_BYTES:
            self.cache[name] = result
        return result

    def _evaluate(self, node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            return numpy_helper.to_array(attrs["value"]) if "value" in attrs else None
        if node.op_type not in FOLDABLE or node.domain not in ("", "ai.onnx"):
            return None
        inputs = [self.value(x) for x in node.input]
        if any(x is None for x in inputs):
            return None
        if node.op_type == "Transpose":
            return np.transpose(inputs[0], attrs.get("perm"))
        if node.op_type == "Mul":
            return inputs[0] * inputs[1]
        if node.op_type == "Div":
            return inputs[0] / inputs[1]
        if node.op_type == "Cast":
            return inputs[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        return inputs[0]  # Identity


def _live_nodes(graph):
    """The nodes that some graph output depends on, in their order."""
    needed = {o.name for o in graph.output}
    live = set()
    for i in range(len(graph.node) - 1, -1, -1):
        node = graph.node[i]
        if any(out in needed for out in node.output):
            live.add(i)
            needed.update(x for x in node.input if x)
    return [node for i, node in enumerate(graph.node) if i in live], needed


def convert_to_int8(path):
    """Rewrites the graph at `path` in place; returns the files it is saved as (see onnx_files.save_decoder)."""
    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    constants = _Constants(graph)
    quantized = {}  # the MatMul's weight tensor name -> names of its (int8, scale, zero point) initializers
    nodes = []
    for node in graph.node:
        weight = constants.value(node.input[1]) if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") else None
        if weight is None or weight.ndim != 2 or weight.dtype != np.float32 or constants.value(node.input[0]) is not None:
            nodes.append(node)
            continue
        source = node.input[1]
        if source not in quantized:
            q, scale = quantize_columns(weight)
            base = f"{source}/int8"
            names = (base, f"{base}/scale", f"{base}/zero_point")
            graph.initializer.extend([numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1]),
                                      numpy_helper.from_array(np.zeros(q.shape[1], np.int8), names[2])])
            quantized[source] = names
        nodes.append(helper.make_node("DynamicQuantizeMatMul", [node.input[0], *quantized[source]], list(node.output),
                                      name=f"{node.name}/int8", domain=MS_DOMAIN))
    if not quantized:
        raise ValueError(f"{path}: no MatMul reads a constant 2-D float32 weight; nothing to quantize")
    del graph.node[:]
    graph.node.extend(nodes)

    # the float32 weights only the replaced products read, and the Transposes and constants that led to them
    live, needed = _live_nodes(graph)
    del graph.node[:]
    graph.node.extend(live)
    kept = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return save_decoder(model, path)


def quantized_products(path):
    """How many DynamicQuantizeMatMul nodes the graph at `path` has (for tests and logs)."""
    model = onnx.load(str(path), load_external_data=False)
    return sum(1 for node in model.graph.node if node.op_type == "DynamicQuantizeMatMul" and node.domain == MS_DOMAIN)

