/**
 * Named adapters (vLLM's and LoRAX's LoRA library): LoRA factors of the LM head under a name, served as their own
 * models (`model` = the name, `parent` = the base model). They come from the package's LoRA library, from files
 * (adapter-files.ts), or from example texts through the hypernetwork. A request takes a reference to the factors at
 * admission, so unloading an adapter never disturbs a request already running with it. The package's own adapters
 * are read-only and their name prefix is reserved: a client asking for `library:email` always gets the package's
 * weights, never an adapter someone loaded under that name.
 */
import type { LoraFactors } from '../engine/protocol.js';
import { ServiceError } from '../errors.js';

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
/** Prefix of the package library's entries as named adapters (`library:<domain>`). */
export const PACKAGE_ADAPTER_PREFIX = 'library:';
/**
 * Largest factor magnitude accepted: trained LoRA factors are far smaller, and bigger ones can push logits past
 * float32 (an update of 3e38 turns every logit into Infinity or NaN).
 */
const MAX_FACTOR_MAGNITUDE = 1e4;

export class AdapterRegistry {
  private readonly adapters = new Map<string, NamedAdapter>();
  /** Name prefixes only the package's adapters may use: its library's, and the base model's `<model>:<mode>` ids. */
  private readonly reservedPrefixes: readonly string[];

  constructor(private readonly limit: number, readonly shape: AdapterShape, private readonly reserved: string) {
    this.reservedPrefixes = [PACKAGE_ADAPTER_PREFIX, `${reserved}:`];
  }

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
    const prefix = this.reservedPrefixes.find((p) => id.startsWith(p));
    if (source !== 'package' && prefix !== undefined) {
      throw new ServiceError('adapter_name_reserved', `Names starting with '${prefix}' are reserved for the model package's own adapters; choose another name.`, { param: 'name' });
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

  /** Unloads a run-time adapter: false when there is none of that name; the package's own are refused. */
  remove(id: string): boolean {
    if (this.adapters.get(id)?.source === 'package') {
      throw new ServiceError('adapter_read_only', `'${id}' is one of the model package's adapters, which cannot be unloaded.`, { param: 'name' });
    }
    return this.adapters.delete(id);
  }
}

function invalid(message: string): never {
  throw new ServiceError('invalid_adapter', message, { param: 'path' });
}

/** Refuses factors of the wrong rank or size, or with a value that is not finite or too large (invalid_adapter). */
export function checkFactors(f: LoraFactors, shape: AdapterShape): void {
  if (!Number.isInteger(f.rank) || f.rank < 1 || f.rank > shape.maxRank) invalid(`The adapter's rank is ${f.rank}; this server takes ranks 1 to ${shape.maxRank}.`);
  if (f.a.length !== f.rank * shape.dim || f.b.length !== shape.vocabSize * f.rank) invalid('The adapter\'s factors do not match its rank and the model\'s dimensions.');
  for (const v of [f.a, f.b]) {
    for (let i = 0; i < v.length; i++) {
      if (!Number.isFinite(v[i])) invalid('The adapter has a value that is not a finite number.');
      if (Math.abs(v[i]) > MAX_FACTOR_MAGNITUDE) invalid(`The adapter has a factor of magnitude ${Math.abs(v[i]).toExponential(2)}, more than the ${MAX_FACTOR_MAGNITUDE} accepted.`);
    }
  }
}
