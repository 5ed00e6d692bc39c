"""A copy of an existing model package with its decoder's weights in int8 (or float16), without the training run or the
checkpoint that made it: the trained default package, an import, an adapted import.

    npm run model:quantize -- PKG_DIR OUT_DIR [--dtype int8|float16] [--name NAME]

Every file is copied as it is except `decoder.onnx`, which is rewritten (training/onnx_int8.py or onnx_float16.py;
the decoder's inputs and outputs do not change, so the hypernetwork, the LoRA factors and the embedding table still
fit it), and `equivalence.json`, which is left out: it holds float32 PyTorch's logits, which a quantized graph does
not reproduce within the replay's tolerance. The manifest gets the new decoder's digest, `architecture.dtype`, and a
`quantized` section naming the source package and its decoder's digest. `eval.json` stays the source's evaluation (of
the float32 decoder); `npm run bench:quality -- PKG_DIR OUT_DIR` measures what the rewrite changes.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log, write_json  # noqa: E402
from export import sha256  # noqa: E402
from onnx_files import external_files  # noqa: E402
from onnx_float16 import convert_to_float16  # noqa: E402
from onnx_int8 import convert_to_int8  # noqa: E402

CONVERTERS = {"int8": convert_to_int8, "float16": convert_to_float16}
DROPPED = ("equivalence",)  # files a quantized decoder no longer matches


class QuantizeError(Exception):
    pass


def quantize_package(source, out, dtype="int8", name=None):
    started = time.time()
    source, out = Path(source).resolve(), Path(out).resolve()
    manifest_path = source / "manifest.json"
    if not manifest_path.exists():
        raise QuantizeError(f"{source}: no manifest.json (not a model package)")
    if out == source:
        raise QuantizeError("the output folder is the package itself; name another one")
    if out.exists() and any(out.iterdir()):
        raise QuantizeError(f"{out} exists and is not empty")
    manifest = json.loads(manifest_path.read_text())
    current = (manifest.get("architecture") or {}).get("dtype", "float32")
    if current != "float32":
        raise QuantizeError(f"{source}'s decoder is {current} already; quantize a float32 package")
    files = dict(manifest["files"])
    decoder = files["decoder"]

    out.mkdir(parents=True, exist_ok=True)
    dropped = {key: files.pop(key) for key in DROPPED if key in files}
    decoder_data = external_files(source / decoder)
    skip = set(dropped.values()) | {"manifest.json"}
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in skip:
            shutil.copyfile(path, out / path.name)
    log(f"copied {source} to {out}; rewriting {decoder} in {dtype}")
    written = CONVERTERS[dtype](out / decoder)
    for stale in decoder_data:
        if stale not in written:
            (out / stale).unlink(missing_ok=True)
    files.pop("decoder_data", None)
    if len(written) > 1:
        files["decoder_data"] = written[1]

    source_digest = (manifest.get("sha256") or {}).get("decoder") or sha256(source / decoder)
    manifest["files"] = files
    manifest["sha256"] = {key: sha256(out / file) for key, file in files.items() if (out / file).exists()}
    manifest["architecture"] = {**(manifest.get("architecture") or {}), "dtype": dtype}
    manifest["quantized"] = {"dtype": dtype, "from": str(source), "from_name": manifest.get("name"),
                             "from_decoder_sha256": source_digest, "dropped": sorted(dropped.values()),
                             "seconds": round(time.time() - started, 1)}
    if name is not None:
        manifest["name"] = name
    write_json(manifest, out / "manifest.json")
    before = sum((source / f).stat().st_size for f in [decoder, *decoder_data])
    after = sum((out / f).stat().st_size for f in written)
    log(f"{out}: decoder {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB in {time.time() - started:.0f} s; "
        f"serve it with MODEL_DIR={out} npm start")
    return manifest


def main():
    parser = argparse.ArgumentParser(description="Copy a model package with its decoder's weights quantized (int8) or halved (float16).")
    parser.add_argument("package", help="the model package to copy (float32)")
    parser.add_argument("out_dir", help="package folder to write (absent or empty)")
    parser.add_argument("--dtype", choices=tuple(CONVERTERS), default="int8",
                        help="int8: DynamicQuantizeMatMul over per-column int8 weights (CPU); float16: half-precision weights and products")
    parser.add_argument("--name", default=None, help="the copy's package name (default: the source's)")
    args = parser.parse_args()
    try:
        quantize_package(args.package, args.out_dir, args.dtype, args.name)
    except QuantizeError as error:
        raise SystemExit(f"model:quantize: {error}") from None


if __name__ == "__main__":
    main()
