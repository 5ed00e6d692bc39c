/**
 * The seed's two baselines, served as modes (the package's `library` and `masks` sections):
 *
 * - a modular LoRA library, one LoRA per training domain: a cluster takes the entry whose domain centroid is nearest
 *   its context (`library`), or the exact softmax-weighted sum of every entry's update (`library_weighted`), written
 *   as one LoRA of rank domains x r (the A's stacked, each B scaled by its weight);
 * - LoRA*Mask: one shared LoRA (A, B) and one mask per domain over every entry of A and B; a cluster's masks are
 *   blended by the same softmax selector, A_eff = A * sum_i w_i M_i^A, B_eff = B * sum_i w_i M_i^B (rank r).
 *
 * The selector is softmax(cosine(context, centroid_i) / temperature), the temperature chosen on validation at build
 * time (manifest). Plain loops: at most a few domains x vocab x rank multiply-adds per cluster.
 */
import type { LoraFactors } from '../engine/protocol.js';
import type { ModelPackage } from '../model/package.js';
import { cosineToCentroids } from './centroids.js';

export type DomainMode = 'library' | 'library_weighted' | 'masks';

interface Selector {
  names: string[];
  temperature: number;
  /** [domains, dim], L2-normalised */
  centroids: Float32Array;
}

export class DomainAdapters {
  private constructor(
    private readonly vocabSize: number,
    private readonly dim: number,
    private readonly library: (Selector & { rank: number; a: Float32Array; b: Float32Array }) | null,
    private readonly masks: (Selector & { rank: number; a: Float32Array; b: Float32Array; maskA: Float32Array; maskB: Float32Array }) | null,
  ) {}

  static fromPackage(pkg: ModelPackage): DomainAdapters {
    const m = pkg.manifest;
    const library = m.library === undefined ? null : {
      names: m.library.names, temperature: m.library.temperature, rank: m.library.rank, centroids: pkg.readTensor('library_centroids'),
      a: pkg.readTensor('library_lora_a'), b: pkg.readTensor('library_lora_b'),
    };
    const masks = m.masks === undefined ? null : {
      names: m.masks.names, temperature: m.masks.temperature, rank: m.masks.rank, centroids: pkg.readTensor('masks_centroids'),
      a: pkg.readTensor('masks_lora_a'), b: pkg.readTensor('masks_lora_b'), maskA: pkg.readTensor('masks_mask_a'), maskB: pkg.readTensor('masks_mask_b'),
    };
    return new DomainAdapters(m.dims.vocab_size, m.dims.d_model, library, masks);
  }

  /** Whether the package serves this mode. */
  has(mode: DomainMode): boolean {
    return mode === 'masks' ? this.masks !== null : this.library !== null;
  }

  /** The library's entries as named adapters: [domain name, factors]. */
  libraryEntries(): Array<[string, LoraFactors]> {
    const lib = this.library;
    if (lib === null) return [];
    const { rank: r } = lib;
    const D = this.dim;
    const V = this.vocabSize;
    return lib.names.map((name, k) => [name, { rank: r, a: lib.a.slice(k * r * D, (k + 1) * r * D), b: lib.b.slice(k * V * r, (k + 1) * V * r) }]);
  }

  /** The adapter of a cluster whose context (mean member feature) is `context`. */
  factors(mode: DomainMode, context: Float32Array): LoraFactors {
    if (mode === 'masks') return this.masked(context);
    const lib = this.library;
    if (lib === null) throw new Error('this model package has no LoRA library');
    const D = this.dim;
    const V = this.vocabSize;
    const r = lib.rank;
    const weights = selectorWeights(context, lib.centroids, lib.names.length, mode === 'library' ? 0 : lib.temperature);
    if (mode === 'library') {
      const k = weights.indexOf(1);
      return { rank: r, a: lib.a.slice(k * r * D, (k + 1) * r * D), b: lib.b.slice(k * V * r, (k + 1) * V * r) };
    }
    const K = lib.names.length;
    const R = K * r;
    const b = new Float32Array(V * R);
    for (let v = 0; v < V; v++) {
      for (let k = 0; k < K; k++) {
        const w = weights[k];
        const from = (k * V + v) * r;
        for (let j = 0; j < r; j++) b[v * R + k * r + j] = w * lib.b[from + j];
      }
    }
    return { rank: R, a: lib.a.slice(), b };
  }

  private masked(context: Float32Array): LoraFactors {
    const m = this.masks;
    if (m === null) throw new Error('this model package has no LoRA*Mask set');
    const K = m.names.length;
    const weights = selectorWeights(context, m.centroids, K, m.temperature);
    const blend = (shared: Float32Array, masks: Float32Array) => {
      const out = new Float32Array(shared.length);
      for (let k = 0; k < K; k++) {
        const w = weights[k];
        const offset = k * shared.length;
        for (let i = 0; i < shared.length; i++) out[i] += w * masks[offset + i];
      }
      for (let i = 0; i < shared.length; i++) out[i] *= shared[i];
      return out;
    };
    return { rank: m.rank, a: blend(m.a, m.maskA), b: blend(m.b, m.maskB) };
  }
}

/** softmax(cosine(context, centroid_i) / temperature); temperature 0 is the one-hot of the nearest centroid. */
function selectorWeights(context: Float32Array, centroids: Float32Array, count: number, temperature: number): number[] {
  const sims = cosineToCentroids(context, centroids, count);
  if (temperature === 0) {
    const best = sims.indexOf(Math.max(...sims));
    return sims.map((_, k) => (k === best ? 1 : 0));
  }
  const top = Math.max(...sims);
  const exps = sims.map((s) => Math.exp((s - top) / temperature));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / total);
}
