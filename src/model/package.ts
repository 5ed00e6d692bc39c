/**
 * A model package opened for serving: the checked manifest, the tokenizer, and the raw float32 tensors.
 * Both threads open it: the main thread for tokenising and features, the worker for the ONNX sessions.
 */
import { readFileSync } from 'node:fs';
import { ModelPackageError } from '../errors.js';
import { isAdaptive, loadManifest, type AdaptiveManifest, type LoadedManifest, type Manifest, type TensorKey } from './manifest.js';
import { ChatTemplate } from './chat-template.js';
import { TextTokenizer } from './tokenizer.js';

export class ModelPackage {
  readonly dir: string;
  readonly manifest: Manifest;
  readonly paths: LoadedManifest['paths'];
  readonly tokenizer: TextTokenizer;
  private template: ChatTemplate | null | undefined;

  private constructor(loaded: LoadedManifest, tokenizer: TextTokenizer) {
    this.dir = loaded.dir;
    this.manifest = loaded.manifest;
    this.paths = loaded.paths;
    this.tokenizer = tokenizer;
  }

  /** The checkpoint's chat template (null: the package has none, and serves no chat); parsed on first use, so the worker never parses it. */
  get chatTemplate(): ChatTemplate | null {
    if (this.template === undefined) {
      const { chat_template: source, bos_token: bos, eos_token: eos } = this.manifest.tokenizer;
      const bosToken = bos ?? (this.tokenizer.bosId === null ? '' : this.tokenizer.piece(this.tokenizer.bosId));
      this.template = source === undefined ? null : ChatTemplate.parse(source, { bos_token: bosToken, eos_token: eos });
    }
    return this.template;
  }

  /** Opens and checks the package in `dir`; throws ModelPackageError naming the problem. */
  static open(dir: string): ModelPackage {
    const loaded = loadManifest(dir);
    return new ModelPackage(loaded, TextTokenizer.load(loaded.paths.tokenizer, loaded.manifest));
  }

  get dims(): Manifest['dims'] {
    return this.manifest.dims;
  }

  /** The manifest when the package has its adaptation parts (hypernetwork, static LoRA), else null: a base-only package. */
  get adaptive(): AdaptiveManifest | null {
    return isAdaptive(this.manifest) ? this.manifest : null;
  }

  /** A float32 tensor named in `manifest.tensors`, as a flat array (size already checked by loadManifest). */
  readTensor(key: TensorKey): Float32Array {
    const spec = this.manifest.tensors[key];
    const path = this.paths[key];
    if (spec === undefined || path === undefined) throw new ModelPackageError(`Model package ${this.dir} has no tensor ${key}`);
    return readFloat32(path, spec.shape.reduce((a, b) => a * b, 1));
  }
}

/** Reads `count` little-endian float32 values from a file. */
export function readFloat32(path: string, count: number): Float32Array {
  const bytes = readFileSync(path);
  if (bytes.byteLength !== count * 4) {
    throw new ModelPackageError(`${path} has ${bytes.byteLength} bytes, expected ${count * 4}`);
  }
  const out = new Float32Array(count);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}
