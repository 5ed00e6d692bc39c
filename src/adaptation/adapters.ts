/**
 * Named adapters (vLLM's and LoRAX's LoRA library): LoRA factors of the LM head under a name, served as their own
 * models (`model` = the name, `parent` = the base model). They come from the package's LoRA library, from files
 * (a `.safetensors` LoRA, a PEFT adapter folder, or another package of the same base model), or from example texts
 * through the hypernetwork. A request takes a reference to the factors at admission, so unloading an adapter
 * never disturbs a request already running with it.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { LoraFactors } from '../engine/protocol.js';
import { ServiceError } from '../errors.js';
import { ModelPackage } from '../model/package.js';
import { readSafetensors, SafetensorsError, type Float32Tensor } from './safetensors.js';

export type AdapterSource = 'package' | 'file' | 'examples';

export interface NamedAdapter {
  id: string;
  factors: LoraFactors;
  source: AdapterSource;
  created: number;
  /** Example texts the adapter was made from (source `examples`). */
  examples?: number;
}

export interface AdapterShape {
  vocabSize: number;
  dim: number;
  /** Highest rank accepted (the decoder stacks every adapter of a run at the largest rank in use). */
  maxRank: number;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

export class AdapterRegistry {
  private readonly adapters = new Map<string, NamedAdapter>();

  constructor(private readonly limit: number, readonly shape: AdapterShape, private readonly reserved: string) {}

  list(): NamedAdapter[] {
    return [...this.adapters.values()];
  }

  get(id: string): NamedAdapter | undefined {
    return this.adapters.get(id);
  }

  /** Refuses a bad, taken or reserved name, or a full library, before any work is done for it. */
  checkName(id: string, source: AdapterSource = 'file'): void {
    if (!NAME.test(id)) {
      throw new ServiceError('invalid_request', `Adapter names are 1 to 64 characters of letters, digits, '.', '_', ':' and '-', starting with a letter or digit (got ${JSON.stringify(id)}).`, { param: 'name' });
    }
    if (id === this.reserved || this.adapters.has(id)) throw new ServiceError('adapter_exists', `The name '${id}' is already taken; delete that adapter first or choose another name.`, { param: 'name' });
    if (source !== 'package' && this.loaded() >= this.limit) {
      throw new ServiceError('adapter_limit', `At most ${this.limit} adapters can be loaded at run time (MAX_ADAPTERS); delete one first.`, { param: 'name' });
    }
  }

  /** Adapters loaded at run time (the package's own do not count against MAX_ADAPTERS). */
  loaded(): number {
    return this.list().filter((a) => a.source !== 'package').length;
  }

  add(id: string, factors: LoraFactors, source: AdapterSource, extra: { examples?: number } = {}): NamedAdapter {
    this.checkName(id, source);
    checkFactors(factors, this.shape);
    const adapter: NamedAdapter = { id, factors, source, created: Math.floor(Date.now() / 1000), ...extra };
    this.adapters.set(id, adapter);
    return adapter;
  }

  remove(id: string): boolean {
    return this.adapters.delete(id);
  }
}

function invalid(message: string): never {
  throw new ServiceError('invalid_adapter', message, { param: 'path' });
}

function checkFactors(f: LoraFactors, shape: AdapterShape): void {
  if (!Number.isInteger(f.rank) || f.rank < 1 || f.rank > shape.maxRank) invalid(`The adapter's rank is ${f.rank}; this server takes ranks 1 to ${shape.maxRank}.`);
  if (f.a.length !== f.rank * shape.dim || f.b.length !== shape.vocabSize * f.rank) invalid('The adapter\'s factors do not match its rank and the model\'s dimensions.');
  for (const v of [f.a, f.b]) for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i])) invalid('The adapter has a value that is not a finite number.');
}

/**
 * LM-head LoRA factors from a file or folder on the server:
 * - a `.safetensors` file holding one pair lora_A [r, d_model] and lora_B [vocab, r] (PEFT's `*.lora_A.weight` /
 *   `*.lora_B.weight`, or `lora_a` / `lora_b`);
 * - a PEFT adapter folder (adapter_model.safetensors, with adapter_config.json's lora_alpha / r as the scale);
 * - a model package of the same base model (its static LoRA).
 */
export async function loadAdapterFile(path: string, served: ModelPackage, shape: AdapterShape): Promise<LoraFactors> {
  if (!existsSync(path)) invalid(`No file or folder at ${path}.`);
  if (statSync(path).isDirectory()) {
    if (existsSync(join(path, 'manifest.json'))) return fromPackage(path, served);
    const weights = join(path, 'adapter_model.safetensors');
    if (!existsSync(weights)) invalid(`${path} is neither a model package (manifest.json) nor a PEFT adapter folder (adapter_model.safetensors).`);
    return fromSafetensors(weights, shape, peftScale(join(path, 'adapter_config.json')));
  }
  if (!path.endsWith('.safetensors')) invalid(`${path} is not a .safetensors file nor a folder.`);
  return fromSafetensors(path, shape, 1);
}

function peftScale(configPath: string): number {
  if (!existsSync(configPath)) return 1;
  let config: { lora_alpha?: unknown; r?: unknown };
  try {
    config = JSON.parse(readFileSync(configPath, 'utf8')) as typeof config;
  } catch {
    invalid('adapter_config.json is not valid JSON.');
  }
  return typeof config.lora_alpha === 'number' && typeof config.r === 'number' && config.r > 0 ? config.lora_alpha / config.r : 1;
}

async function fromSafetensors(file: string, shape: AdapterShape, scale: number): Promise<LoraFactors> {
  let tensors: Map<string, Float32Tensor>;
  try {
    tensors = await readSafetensors(file);
  } catch (error) {
    if (error instanceof SafetensorsError) invalid(`${file} is not a valid safetensors file: ${error.message}.`);
    throw error;
  }
  const find = (names: RegExp) => [...tensors.entries()].filter(([name]) => names.test(name));
  const as = find(/(^|\.)lora_(A(\.weight)?|a)$/);
  const bs = find(/(^|\.)lora_(B(\.weight)?|b)$/);
  if (as.length !== 1 || bs.length !== 1) {
    invalid(`${file} must hold exactly one LoRA pair for the LM head (lora_A / lora_B); it holds ${[...tensors.keys()].join(', ') || 'no tensor'}.`);
  }
  const [a, b] = [as[0][1], bs[0][1]];
  const shapeA = a.shape.filter((d, i) => !(i === 0 && d === 1 && a.shape.length === 3));
  const shapeB = b.shape.filter((d, i) => !(i === 0 && d === 1 && b.shape.length === 3));
  const rank = shapeA[0];
  if (shapeA.length !== 2 || shapeA[1] !== shape.dim || shapeB.length !== 2 || shapeB[0] !== shape.vocabSize || shapeB[1] !== rank) {
    invalid(`The LoRA has lora_A [${a.shape.join(', ')}] and lora_B [${b.shape.join(', ')}]; this model's LM head needs lora_A [r, ${shape.dim}] and lora_B [${shape.vocabSize}, r].`);
  }
  const factors = { rank, a: a.data, b: scale === 1 ? b.data : b.data.map((v) => v * scale) };
  checkFactors(factors, shape);
  return factors;
}

function fromPackage(dir: string, served: ModelPackage): LoraFactors {
  let other: ModelPackage;
  try {
    other = ModelPackage.open(dir);
  } catch (error) {
    invalid(`${dir} is not a valid model package: ${(error as Error).message}`);
  }
  const sameBase = other.manifest.sha256?.embeddings !== undefined && other.manifest.sha256.embeddings === served.manifest.sha256?.embeddings;
  if (!sameBase) invalid(`${dir} was trained on a different base model (its embeddings differ from the served model's).`);
  return { rank: other.manifest.lora.rank, a: other.readTensor('static_lora_a'), b: other.readTensor('static_lora_b') };
}
