/**
 * Named adapters (vLLM's and LoRAX's LoRA library): LoRA factors of the LM head under a name, served as their own
 * models (`model` = the name, `parent` = the base model). They come from the package's LoRA library, from files
 * (a `.safetensors` LoRA, a PEFT adapter folder, or another package of the same base model), or from example texts
 * through the hypernetwork. A request takes a reference to the factors at admission, so unloading an adapter
 * never disturbs a request already running with it.
 */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { LoraFactors } from '../engine/protocol.js';
import { ServiceError } from '../errors.js';
import type { ModelPackage } from '../model/package.js';
import { parseSafetensors, SafetensorsError, type TensorEntry } from './safetensors.js';

export type AdapterSource = 'package' | 'file' | 'examples';

export interface NamedAdapter {
  id: string;
  factors: LoraFactors;
  source: AdapterSource;
  created: number;
  /** Example texts the adapter was made from (source `examples`). */
  examples?: number;
  /** Source `examples` with a gated package: their context's similarity to the nearest training domain, and whether the gate turned it away (the adapter is then the static LoRA). */
  contextSimilarity?: number;
  gated?: boolean;
  /** Source `examples` with a gated package: the weight of its generated update (see gate.ts). */
  dynamicWeight?: number;
}

export interface AdapterShape {
  vocabSize: number;
  dim: number;
  /** Highest rank accepted (the decoder stacks every adapter of a run at the largest rank in use). */
  maxRank: number;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;
/** Largest adapter file read (a rank-64 LoRA of this LM head is about 1 MB; other tensors may ride along). */
const MAX_FILE_BYTES = 64 * 1024 * 1024;
const MAX_HEADER_BYTES = 1024 * 1024;
/**
 * Largest factor magnitude accepted: trained LoRA factors are far smaller, and bigger ones can push logits past
 * float32 (an update of 3e38 turns every logit into Infinity or NaN).
 */
const MAX_FACTOR_MAGNITUDE = 1e4;

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

  add(id: string, factors: LoraFactors, source: AdapterSource, extra: Pick<NamedAdapter, 'examples' | 'contextSimilarity' | 'gated' | 'dynamicWeight'> = {}): NamedAdapter {
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
  for (const v of [f.a, f.b]) {
    for (let i = 0; i < v.length; i++) {
      if (!Number.isFinite(v[i])) invalid('The adapter has a value that is not a finite number.');
      if (Math.abs(v[i]) > MAX_FACTOR_MAGNITUDE) invalid(`The adapter has a factor of magnitude ${Math.abs(v[i]).toExponential(2)}, more than the ${MAX_FACTOR_MAGNITUDE} accepted.`);
    }
  }
}

/** The file at `path` (links followed) if it is a regular file of at most MAX_FILE_BYTES: never a device, FIFO or folder. */
async function readRegularFile(path: string): Promise<Buffer> {
  const info = await stat(path).catch(() => invalid(`No file at ${path}.`));
  if (!info.isFile()) invalid(`${path} is not a regular file.`);
  if (info.size > MAX_FILE_BYTES) invalid(`${path} has ${info.size} bytes, more than the ${MAX_FILE_BYTES} accepted for an adapter.`);
  return readFile(path).catch((error: Error) => invalid(`${path} cannot be read: ${error.message}`));
}

/**
 * LM-head LoRA factors from a file or folder on the server:
 * - a `.safetensors` file holding one pair lora_A [r, d_model] and lora_B [vocab, r] (PEFT's `*.lora_A.weight` /
 *   `*.lora_B.weight`, or `lora_a` / `lora_b`);
 * - a PEFT adapter folder (adapter_model.safetensors, with adapter_config.json's lora_alpha / r as the scale);
 * - a model package of the same base model (its static LoRA).
 */
export async function loadAdapterFile(path: string, served: ModelPackage, shape: AdapterShape): Promise<LoraFactors> {
  const info = await stat(path).catch(() => invalid(`No file or folder at ${path}.`));
  if (info.isDirectory()) {
    if (await isRegularFile(join(path, 'manifest.json'))) return fromPackage(path, served, shape);
    const weights = join(path, 'adapter_model.safetensors');
    if (!(await isRegularFile(weights))) invalid(`${path} is neither a model package (manifest.json) nor a PEFT adapter folder (adapter_model.safetensors).`);
    return fromSafetensors(weights, shape, await peftScale(join(path, 'adapter_config.json')));
  }
  if (!path.endsWith('.safetensors')) invalid(`${path} is not a .safetensors file nor a folder.`);
  return fromSafetensors(path, shape, 1);
}

async function isRegularFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null))?.isFile() ?? false;
}

/** PEFT's scale of the update: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora; 1 without a config file. */
async function peftScale(configPath: string): Promise<number> {
  if (!(await isRegularFile(configPath))) return 1;
  let config: { lora_alpha?: unknown; r?: unknown; use_rslora?: unknown };
  try {
    config = JSON.parse((await readRegularFile(configPath)).toString('utf8')) as typeof config;
  } catch (error) {
    if (error instanceof ServiceError) throw error;
    invalid('adapter_config.json is not valid JSON.');
  }
  const { lora_alpha: alpha, r, use_rslora: rslora } = config ?? {};
  if (alpha === undefined && r === undefined) return 1;
  if (typeof alpha !== 'number' || !Number.isFinite(alpha) || typeof r !== 'number' || !Number.isInteger(r) || r < 1) {
    invalid('adapter_config.json must give lora_alpha as a number and r as a positive integer.');
  }
  if (rslora !== undefined && typeof rslora !== 'boolean') invalid('adapter_config.json use_rslora must be true or false.');
  return rslora === true ? alpha / Math.sqrt(r) : alpha / r;
}

async function fromSafetensors(file: string, shape: AdapterShape, scale: number): Promise<LoraFactors> {
  let tensors: TensorEntry[];
  try {
    tensors = parseSafetensors(await readRegularFile(file), MAX_HEADER_BYTES);
  } catch (error) {
    if (error instanceof SafetensorsError) invalid(`${file} is not a valid safetensors file: ${error.message}.`);
    throw error;
  }
  const as = tensors.filter((t) => /(^|\.)lora_(A(\.weight)?|a)$/.test(t.name));
  const bs = tensors.filter((t) => /(^|\.)lora_(B(\.weight)?|b)$/.test(t.name));
  if (as.length !== 1 || bs.length !== 1) {
    const names = tensors.slice(0, 8).map((t) => t.name).join(', ') + (tensors.length > 8 ? `, ... (${tensors.length} tensors)` : '');
    invalid(`${file} must hold exactly one LoRA pair for the LM head (lora_A / lora_B); it holds ${names || 'no tensor'}.`);
  }
  const [a, b] = [as[0], bs[0]];
  const squeeze = (dims: number[]) => (dims.length === 3 && dims[0] === 1 ? dims.slice(1) : dims);
  const [shapeA, shapeB] = [squeeze(a.shape), squeeze(b.shape)];
  const rank = shapeA[0];
  if (shapeA.length !== 2 || shapeA[1] !== shape.dim || shapeB.length !== 2 || shapeB[0] !== shape.vocabSize || shapeB[1] !== rank) {
    invalid(`The LoRA has lora_A [${a.shape.join(', ')}] and lora_B [${b.shape.join(', ')}]; this model's LM head needs lora_A [r, ${shape.dim}] and lora_B [${shape.vocabSize}, r].`);
  }
  if (rank < 1 || rank > shape.maxRank) invalid(`The adapter's rank is ${rank}; this server takes ranks 1 to ${shape.maxRank}.`);
  let factors: LoraFactors;
  try {
    const bValues = b.read();
    factors = { rank, a: a.read(), b: scale === 1 ? bValues : bValues.map((v) => v * scale) };
  } catch (error) {
    if (error instanceof SafetensorsError) invalid(`${file}: ${error.message}.`);
    throw error;
  }
  checkFactors(factors, shape);
  return factors;
}

/**
 * The static LoRA of another model package of the same base model. Only its manifest and the two factor files are
 * read (each checked against its sha256), so loading never hashes a whole package on the event loop.
 */
async function fromPackage(dir: string, served: ModelPackage, shape: AdapterShape): Promise<LoraFactors> {
  let manifest: { dims?: { vocab_size?: unknown; d_model?: unknown }; lora?: { rank?: unknown }; files?: Record<string, unknown>; sha256?: Record<string, unknown> };
  try {
    manifest = JSON.parse((await readRegularFile(join(dir, 'manifest.json'))).toString('utf8')) as typeof manifest;
  } catch (error) {
    if (error instanceof ServiceError) throw error;
    invalid(`${dir}/manifest.json is not valid JSON.`);
  }
  const embeddings = served.manifest.sha256?.embeddings;
  if (embeddings === undefined || manifest?.sha256?.embeddings !== embeddings) {
    invalid(`${dir} was trained on a different base model (its embeddings differ from the served model's).`);
  }
  const rank = manifest.lora?.rank;
  if (typeof rank !== 'number' || !Number.isInteger(rank)) invalid(`${dir}/manifest.json has no lora.rank.`);
  const read = async (key: 'static_lora_a' | 'static_lora_b', count: number) => {
    const file = manifest.files?.[key];
    if (typeof file !== 'string' || file.includes('/') || file.includes('\\')) invalid(`${dir}/manifest.json names no ${key} file.`);
    const bytes = await readRegularFile(join(dir, file));
    if (createHash('sha256').update(bytes).digest('hex') !== manifest.sha256?.[key]) invalid(`${dir}/${file} does not match its sha256 in the manifest.`);
    if (bytes.byteLength !== count * 4) invalid(`${dir}/${file} has ${bytes.byteLength} bytes, expected float32 x ${count}.`);
    return Float32Array.from({ length: count }, (_, i) => bytes.readFloatLE(i * 4));
  };
  const factors = { rank, a: await read('static_lora_a', rank * shape.dim), b: await read('static_lora_b', shape.vocabSize * rank) };
  checkFactors(factors, shape);
  return factors;
}
