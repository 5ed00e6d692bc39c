/**
 * The KV cache's size, settled before the engine starts: MAX_MODEL_LEN positions per slot, MAX_BATCH_SIZE slots, and
 * the memory it may take. The slots are allocated whole at start, and rows write into them as they grow, so a cache
 * too large for the machine would not fail at start but later, under load, when the kernel's OOM killer ends the
 * process mid-traffic; a setting that cannot fit stops the start instead, with the numbers and what to change.
 *
 * The limit (KV_CACHE_MAX_BYTES = 0, the default) is the memory the process may use, less what the rest of the
 * service needs: the memory is the cgroup's limit where there is one (a container's; `process.constrainedMemory()`),
 * else the machine's (`os.totalmem()`); what the rest needs is twice the bytes of the package's files (ONNX Runtime
 * holds the decoder's weights, which pass through a second copy while a session is created, and both threads read
 * the embedding table) and 1 GiB (V8's heaps, ONNX Runtime's working memory for a run, requests and buffers). A
 * setting of KV_CACHE_MAX_BYTES replaces that rule (for a machine shared with other services, or a deliberate
 * overcommit).
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { totalmem } from 'node:os';
import type { Config } from '../config.js';
import { ConfigError } from '../errors.js';
import { kvHeads } from '../model/manifest.js';
import type { ModelPackage } from '../model/package.js';
import { kvCacheBytes, type SlotShape } from './kv-slots.js';

/** MAX_MODEL_LEN's default is the model's context, up to this many positions. */
export const DEFAULT_MAX_MODEL_LEN = 4096;
/** Memory left to the rest of the process besides twice the package's files (see above). */
export const MEMORY_MARGIN_BYTES = 1024 ** 3;

export interface MemoryInfo {
  /** Bytes the process may use (the cgroup's limit, or the machine's memory). */
  bytes: number;
  source: 'cgroup' | 'machine';
}

/** The memory this process may use: its cgroup's limit where that is below the machine's memory, else the machine's. */
export function processMemory(): MemoryInfo {
  const machine = totalmem();
  const constrained = typeof process.constrainedMemory === 'function' ? process.constrainedMemory() : 0;
  return constrained !== undefined && constrained > 0 && constrained < machine ? { bytes: constrained, source: 'cgroup' } : { bytes: machine, source: 'machine' };
}

export interface KvPlan {
  shape: SlotShape;
  bytes: number;
  /** The most bytes allowed, and how that was decided (for the start-up log and the refusal). */
  limit: number;
  limitRule: string;
}

/** Positions per slot: MAX_MODEL_LEN, or by default the model's context up to DEFAULT_MAX_MODEL_LEN. */
export function resolveMaxModelLen(setting: number, context: number): number {
  if (setting === 0) return Math.min(context, DEFAULT_MAX_MODEL_LEN);
  if (setting > context) {
    throw new ConfigError(`MAX_MODEL_LEN=${setting} is more than the model's context of ${context} positions (dims.context); set it to at most ${context}, or leave it unset for ${Math.min(context, DEFAULT_MAX_MODEL_LEN)}`);
  }
  return setting;
}

/** Bytes of the files the manifest names (those present). */
function packageBytes(pkg: ModelPackage): number {
  let total = 0;
  for (const name of new Set(Object.values(pkg.manifest.files))) {
    try {
      total += statSync(join(pkg.dir, name)).size;
    } catch {
      // optional files (equivalence.json, eval.json) may be left out of an image
    }
  }
  return total;
}

const GIB = 1024 ** 3;
export function formatBytes(bytes: number): string {
  return bytes >= GIB ? `${(bytes / GIB).toFixed(2)} GiB` : `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
}

/** The cache's shape and size for this configuration and package; throws ConfigError when it cannot be served. */
export function planKvCache(config: Pick<Config, 'maxModelLen' | 'maxBatchSize' | 'kvCacheMaxBytes'>, pkg: ModelPackage, memory: MemoryInfo = processMemory()): KvPlan {
  const dims = pkg.dims;
  const shape: SlotShape = {
    slots: config.maxBatchSize, layers: dims.n_layer, heads: kvHeads(dims), headDim: dims.head_dim,
    capacity: resolveMaxModelLen(config.maxModelLen, dims.context),
  };
  const bytes = kvCacheBytes(shape);
  let limit: number;
  let limitRule: string;
  if (config.kvCacheMaxBytes > 0) {
    limit = config.kvCacheMaxBytes;
    limitRule = `KV_CACHE_MAX_BYTES=${config.kvCacheMaxBytes}`;
  } else {
    const files = packageBytes(pkg);
    limit = Math.max(0, memory.bytes - 2 * files - MEMORY_MARGIN_BYTES);
    limitRule = `the ${memory.source === 'cgroup' ? "cgroup's memory limit" : "machine's memory"} (${formatBytes(memory.bytes)}) less twice the package's files (${formatBytes(files)}) and ${formatBytes(MEMORY_MARGIN_BYTES)}`;
  }
  if (bytes > limit) {
    throw new ConfigError(
      `The KV cache would take ${formatBytes(bytes)} (${describeShape(shape)}), more than the ${formatBytes(limit)} allowed (${limitRule}); ` +
      'lower MAX_BATCH_SIZE or MAX_MODEL_LEN, or set KV_CACHE_MAX_BYTES',
    );
  }
  return { shape, bytes, limit, limitRule };
}

/** "32 slots (MAX_BATCH_SIZE) x 4 layers x 2 x 4 KV heads x 256 positions (MAX_MODEL_LEN) x 64 x 4 bytes". */
export function describeShape(shape: SlotShape): string {
  return `${shape.slots} slots (MAX_BATCH_SIZE) x ${shape.layers} layers x 2 (keys, values) x ${shape.heads} KV heads x ${shape.capacity} positions (MAX_MODEL_LEN) x head_dim ${shape.headDim} x 4 bytes`;
}
