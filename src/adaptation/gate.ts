/**
 * How much of its generated update a hypernetwork context gets (the package's `hypernet.gate`), for a network whose
 * update is the static LoRA plus a generated part:
 *
 * - none, when the context is unlike every training domain: its cosine similarity to every training domain's
 *   centroid is below the package's threshold. A hypernetwork maps such a context to an update learnt for some
 *   other domain, which on a domain kept out of training cost up to 1.6x the static LoRA's perplexity; the static
 *   LoRA alone serves it instead.
 * - otherwise n / (n + prior_tokens) of it, n being the prompt tokens the context was made from (a cluster's
 *   members together): shrinkage towards the static LoRA, as an estimate from few samples is shrunk towards its
 *   prior. A few short prompts make a noisy context, for which the full update overshoots, on unseen domains most.
 *
 * Both settings are chosen on validation at build time.
 */
import type { ModelPackage } from '../model/package.js';
import { cosineToCentroids } from './centroids.js';

/** What the gate made of one hypernetwork context. */
export interface GateOutcome {
  /** Its similarity to the nearest training domain (null: the package has no gate). */
  similarity: number | null;
  /** The gate turned it away, so the static LoRA serves it. */
  gated: boolean;
  /** The weight of its generated update (0 when gated). */
  weight: number;
}

/** The gate's outcome for a context made from `tokens` prompt tokens; without a gate every update is whole. */
export function gateOutcome(gate: Pick<ContextGate, 'similarity' | 'admits' | 'weight'> | null, context: Float32Array, tokens: number): GateOutcome {
  if (gate === null) return { similarity: null, gated: false, weight: 1 };
  const similarity = gate.similarity(context);
  return { similarity, gated: !gate.admits(similarity), weight: gate.weight(similarity, tokens) };
}

export class ContextGate {
  private constructor(
    private readonly centroids: Float32Array,
    private readonly count: number,
    readonly minSimilarity: number,
    readonly priorTokens: number,
  ) {}

  /** The package's gate, or null when it has none (every context then gets all of its generated update). */
  static fromPackage(pkg: ModelPackage): ContextGate | null {
    const gate = pkg.manifest.hypernet?.gate;
    if (gate === undefined) return null;
    return new ContextGate(pkg.readTensor('gate_centroids'), gate.names.length, gate.min_similarity, gate.prior_tokens ?? 0);
  }

  /** The context's largest cosine similarity to a training domain's centroid. */
  similarity(context: Float32Array): number {
    return Math.max(...cosineToCentroids(context, this.centroids, this.count));
  }

  admits(similarity: number): boolean {
    return similarity >= this.minSimilarity;
  }

  /** Weight of the generated update of a context with this similarity, made from `tokens` prompt tokens. */
  weight(similarity: number, tokens: number): number {
    if (!this.admits(similarity)) return 0;
    return this.priorTokens > 0 ? tokens / (tokens + this.priorTokens) : 1;
  }
}
