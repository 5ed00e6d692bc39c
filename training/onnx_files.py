"""Saving an exported graph as one file, or, past protobuf's 2 GB, as the graph plus one file of its weights."""
from pathlib import Path

import onnx

PROTOBUF_LIMIT = 2 ** 31 - 1


def save_decoder(model, path):
    """Saves `model` at `path` (replacing the per-tensor files torch writes for a big graph) and checks it.
    Returns the file names it takes: [decoder.onnx] or [decoder.onnx, decoder.onnx.data]."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    stale = external_files(path) if path.exists() else []
    if weights < PROTOBUF_LIMIT - (64 << 20):
        onnx.save_model(model, str(path))
        data.unlink(missing_ok=True)
        files = [path.name]
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
        files = [path.name, data.name]
    for name in stale:
        if name not in files:
            (path.parent / name).unlink(missing_ok=True)
    onnx.checker.check_model(str(path))
    return files


def external_files(path):
    """The files a saved graph keeps its external tensors in."""
    model = onnx.load(str(path), load_external_data=False)
    names = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                names.add(entry.value)
    return sorted(names)


def consolidate(path):
    """A graph torch exported with one file per tensor (it does so past 2 GB) rewritten as graph + one data file."""
    path = Path(path)
    if not external_files(path):
        return [path.name]
    return save_decoder(onnx.load(str(path)), path)
