/**
 * Chameleon's fallback for unfamiliar contexts (the package's `hypernet.gate`): a hypernetwork maps a context unlike
 * every training domain to an update learnt for some other domain, which on a domain kept out of training cost up to
 * 1.6x the static LoRA's perplexity. When a context's cosine similarity to every training domain's centroid is below
 * the package's threshold (chosen on validation at build time), its rows take the static LoRA alone, which is
 * exactly what the hypernetwork-on-static gives with its dynamic part zeroed.
 */
import type { ModelPackage } from '../model/package.js';
import { cosineToCentroids } from './centroids.js';

export class ContextGate {
  private constructor(
    private readonly centroids: Float32Array,
    private readonly count: number,
    readonly minSimilarity: number,
  ) {}

  /** The package's gate, or null when it has none (every context then gets its generated update). */
  static fromPackage(pkg: ModelPackage): ContextGate | null {
    const gate = pkg.manifest.hypernet.gate;
    if (gate === undefined) return null;
    return new ContextGate(pkg.readTensor('gate_centroids'), gate.names.length, gate.min_similarity);
  }

  /** The context's largest cosine similarity to a training domain's centroid. */
  similarity(context: Float32Array): number {
    return Math.max(...cosineToCentroids(context, this.centroids, this.count));
  }

  admits(similarity: number): boolean {
    return similarity >= this.minSimilarity;
  }
}
