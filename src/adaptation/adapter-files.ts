/**
 * Adapters loaded from the server's disk (POST /v1/adapters with `path`): a `.safetensors` LoRA of the LM head, a
 * PEFT adapter folder, or another model package of the same base model. The admin token must not become a way to
 * read or probe the rest of the filesystem, so:
 * - files come only from under ADAPTER_DIRS (none: loading by path is off), checked on the real path after every
 *   link is resolved, and a `..` segment is refused before anything is looked up;
 * - each file is opened once, with O_NOFOLLOW (a link swapped in after the check, or a linked file inside an
 *   adapter folder, is refused) and O_NONBLOCK (a FIFO cannot hang the open), and that handle is checked with fstat
 *   (a regular file within the size limit) and then read: the 8-byte length, the header, and only the two tensors;
 * - the caller learns only that the load failed, in one sentence whatever the reason (no existence fact, byte or
 *   tensor name of the file); the reason goes to the server's log;
 * - one load reads at a time, one more may wait, and any further one is refused (429): concurrent loads cannot
 *   multiply the memory or file reads.
 */
import { createHash } from 'node:crypto';
import { constants, type Stats } from 'node:fs';
import { open, realpath, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, relative, sep } from 'node:path';
import type { LoraFactors } from '../engine/protocol.js';
import { ServiceError } from '../errors.js';
import type { ModelPackage } from '../model/package.js';
import { checkFactors, type AdapterShape } from './adapters.js';
import { readSafetensors, type ByteSource } from './safetensors.js';

/** What the caller is told of any refusal, whether the path is outside ADAPTER_DIRS, missing, or a bad file. */
export const ADAPTER_FILE_REFUSED = 'The adapter could not be loaded from that path; the server log says why.';

const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
/** Largest adapter file (a rank-64 LoRA of this LM head is about 1 MB; other tensors may ride along, unread). */
const MAX_FILE_BYTES = 64 * 1024 * 1024;
/** Largest safetensors header, manifest.json or adapter_config.json (the default package's manifest is 26 KB). */
const MAX_HEADER_BYTES = 1024 * 1024;
/** Loads waiting behind the one reading: enough for an admin script's next request, not for a flood. */
const MAX_WAITING = 1;

export interface AdapterFileLogger {
  warn(obj: object, msg: string): void;
}

/** Why a load was refused: for the server's log only (it may say what is at the path). */
class Refusal extends Error {}

function refuse(reason: string): never {
  throw new Refusal(reason);
}

export class AdapterFiles {
  private running: Promise<unknown> = Promise.resolve();
  private pending = 0;

  /** `roots`: ADAPTER_DIRS as given (resolved at each load, so a folder made or moved later counts as it is then). */
  constructor(private readonly roots: readonly string[], private readonly retryAfterSeconds: number) {}

  /** The factors in the file or folder at `path`, and its real path; any refusal is one generic invalid_adapter. */
  async load(path: string, served: ModelPackage, shape: AdapterShape, log: AdapterFileLogger): Promise<{ factors: LoraFactors; path: string }> {
    if (this.roots.length === 0) {
      throw new ServiceError('adapter_files_disabled', 'Loading adapters from files is not enabled on this server: ADAPTER_DIRS names no folder to load them from.', { param: 'path' });
    }
    if (this.pending > MAX_WAITING) {
      throw new ServiceError('adapter_busy', 'Another adapter is being loaded from a file and one more is waiting; try again shortly.', { param: 'path', retryAfterSeconds: this.retryAfterSeconds });
    }
    this.pending++;
    const result = this.running.then(() => this.read(path, served, shape, log)).finally(() => this.pending--);
    this.running = result.catch(() => {});
    return result;
  }

  private async read(path: string, served: ModelPackage, shape: AdapterShape, log: AdapterFileLogger): Promise<{ factors: LoraFactors; path: string }> {
    try {
      const resolved = await this.resolve(path);
      return { factors: await loadAt(resolved, served, shape), path: resolved };
    } catch (error) {
      log.warn({ path, reason: (error as Error).message }, 'adapter file refused');
      throw new ServiceError('invalid_adapter', ADAPTER_FILE_REFUSED, { param: 'path' });
    }
  }

  /** The real path of `path` if it lies inside one of the roots' real paths. */
  private async resolve(path: string): Promise<string> {
    if (path.split(/[\\/]/).includes('..')) refuse('the path has a .. segment');
    const resolved = await realpath(path);
    const roots = await Promise.all(this.roots.map((root) => realpath(root).catch(() => null)));
    if (!roots.some((root) => root !== null && within(root, resolved))) refuse(`${resolved} is not inside ADAPTER_DIRS (${this.roots.join(', ')})`);
    return resolved;
  }
}

function within(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

/** `path` opened without following a link at its end and without waiting for a FIFO's writer; null if nothing is there. */
async function openNoFollow(path: string): Promise<FileHandle | null> {
  try {
    return await open(path, OPEN_FLAGS);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'ELOOP') refuse(`${path} is a symbolic link`);
    throw error;
  }
}

/** The open file's bytes, after fstat says it is a regular file of at most `maxBytes`. */
function regularFile(handle: FileHandle, info: Stats, path: string, maxBytes: number): ByteSource {
  if (!info.isFile()) refuse(`${path} is not a regular file`);
  if (info.size > maxBytes) refuse(`${path} has ${info.size} bytes, more than the ${maxBytes} accepted`);
  return {
    size: info.size,
    async read(position, length) {
      const buffer = Buffer.alloc(length);
      for (let done = 0; done < length;) {
        const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
        if (bytesRead === 0) refuse(`${path} ended before its byte ${position + length} (changed while read?)`);
        done += bytesRead;
      }
      return buffer;
    },
  };
}

/** `use` on the regular file at `path` (at most `maxBytes`), opened once; null if nothing is there. */
async function withFile<T>(path: string, maxBytes: number, use: (file: ByteSource) => Promise<T>): Promise<T | null> {
  const handle = await openNoFollow(path);
  if (handle === null) return null;
  try {
    return await use(regularFile(handle, await handle.stat(), path, maxBytes));
  } finally {
    await handle.close();
  }
}

async function readJson(path: string): Promise<unknown> {
  const bytes = await withFile(path, MAX_HEADER_BYTES, (file) => file.read(0, file.size));
  if (bytes === null) return null;
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    refuse(`${path} is not valid JSON`);
  }
}

/** A real path inside ADAPTER_DIRS: a folder (a package or a PEFT adapter) or a `.safetensors` file. */
async function loadAt(path: string, served: ModelPackage, shape: AdapterShape): Promise<LoraFactors> {
  const handle = (await openNoFollow(path)) ?? refuse(`nothing at ${path}`);
  let factors: LoraFactors;
  try {
    const info = await handle.stat();
    if (info.isDirectory()) factors = await fromFolder(path, served, shape);
    else if (!path.endsWith('.safetensors')) refuse(`${path} is neither a .safetensors file nor a folder`);
    else factors = await fromSafetensors(regularFile(handle, info, path, MAX_FILE_BYTES), path, shape, 1);
  } finally {
    await handle.close();
  }
  checkFactors(factors, shape);
  return factors;
}

async function fromFolder(dir: string, served: ModelPackage, shape: AdapterShape): Promise<LoraFactors> {
  const manifest = await readJson(join(dir, 'manifest.json'));
  if (manifest !== null) return fromPackage(dir, manifest, served, shape);
  const weights = join(dir, 'adapter_model.safetensors');
  const scale = await peftScale(join(dir, 'adapter_config.json'));
  const factors = await withFile(weights, MAX_FILE_BYTES, (file) => fromSafetensors(file, weights, shape, scale));
  return factors ?? refuse(`${dir} is neither a model package (manifest.json) nor a PEFT adapter folder (adapter_model.safetensors)`);
}

/** PEFT's scale of the update: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora; 1 without a config file. */
async function peftScale(configPath: string): Promise<number> {
  const config = (await readJson(configPath)) as { lora_alpha?: unknown; r?: unknown; use_rslora?: unknown } | null;
  const { lora_alpha: alpha, r, use_rslora: rslora } = config ?? {};
  if (alpha === undefined && r === undefined) return 1;
  if (typeof alpha !== 'number' || !Number.isFinite(alpha) || typeof r !== 'number' || !Number.isInteger(r) || r < 1) {
    refuse(`${configPath} must give lora_alpha as a number and r as a positive integer`);
  }
  if (rslora !== undefined && typeof rslora !== 'boolean') refuse(`${configPath}: use_rslora must be true or false`);
  return rslora === true ? alpha / Math.sqrt(r) : alpha / r;
}

/**
 * One pair lora_A [r, d_model] and lora_B [vocab, r] (PEFT's `*.lora_A.weight` / `*.lora_B.weight`, or `lora_a` /
 * `lora_b`), shapes checked from the header before their bytes are read.
 */
async function fromSafetensors(file: ByteSource, path: string, shape: AdapterShape, scale: number): Promise<LoraFactors> {
  const tensors = await readSafetensors(file, MAX_HEADER_BYTES);
  const as = tensors.filter((t) => /(^|\.)lora_(A(\.weight)?|a)$/.test(t.name));
  const bs = tensors.filter((t) => /(^|\.)lora_(B(\.weight)?|b)$/.test(t.name));
  if (as.length !== 1 || bs.length !== 1) {
    const names = tensors.slice(0, 8).map((t) => t.name).join(', ') + (tensors.length > 8 ? `, ... (${tensors.length} tensors)` : '');
    refuse(`${path} must hold exactly one LoRA pair for the LM head (lora_A / lora_B); it holds ${names || 'no tensor'}`);
  }
  const [a, b] = [as[0], bs[0]];
  const squeeze = (dims: number[]) => (dims.length === 3 && dims[0] === 1 ? dims.slice(1) : dims);
  const [shapeA, shapeB] = [squeeze(a.shape), squeeze(b.shape)];
  const rank = shapeA[0];
  if (shapeA.length !== 2 || shapeA[1] !== shape.dim || shapeB.length !== 2 || shapeB[0] !== shape.vocabSize || shapeB[1] !== rank) {
    refuse(`${path} has lora_A [${a.shape.join(', ')}] and lora_B [${b.shape.join(', ')}]; this model's LM head needs lora_A [r, ${shape.dim}] and lora_B [${shape.vocabSize}, r]`);
  }
  if (rank < 1 || rank > shape.maxRank) refuse(`${path} has rank ${rank}; this server takes ranks 1 to ${shape.maxRank}`);
  const bValues = await b.read();
  return { rank, a: await a.read(), b: scale === 1 ? bValues : bValues.map((v) => v * scale) };
}

/**
 * The static LoRA of another model package of the same base model. Only its manifest and the two factor files are
 * read (each checked against its sha256), so loading never hashes a whole package on the event loop.
 */
async function fromPackage(dir: string, json: unknown, served: ModelPackage, shape: AdapterShape): Promise<LoraFactors> {
  const manifest = json as { lora?: { rank?: unknown }; files?: Record<string, unknown>; sha256?: Record<string, unknown> } | null;
  const embeddings = served.manifest.sha256?.embeddings;
  if (embeddings === undefined || manifest?.sha256?.embeddings !== embeddings) refuse(`${dir} was trained on a different base model (its embeddings differ from the served model's)`);
  const rank = manifest.lora?.rank;
  if (typeof rank !== 'number' || !Number.isInteger(rank) || rank < 1 || rank > shape.maxRank) refuse(`${dir}/manifest.json has no lora.rank from 1 to ${shape.maxRank}`);
  const read = async (key: 'static_lora_a' | 'static_lora_b', count: number) => {
    const name = manifest.files?.[key];
    if (typeof name !== 'string' || name.includes('/') || name.includes('\\')) refuse(`${dir}/manifest.json names no ${key} file`);
    const path = join(dir, name);
    const bytes = await withFile(path, count * 4, async (file) => {
      if (file.size !== count * 4) refuse(`${path} has ${file.size} bytes, expected float32 x ${count}`);
      return file.read(0, file.size);
    });
    if (bytes === null) refuse(`no file at ${path}`);
    if (createHash('sha256').update(bytes).digest('hex') !== manifest.sha256?.[key]) refuse(`${path} does not match its sha256 in the manifest`);
    return Float32Array.from({ length: count }, (_, i) => bytes.readFloatLE(i * 4));
  };
  return { rank, a: await read('static_lora_a', rank * shape.dim), b: await read('static_lora_b', shape.vocabSize * rank) };
}
