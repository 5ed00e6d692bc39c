/**
 * Adapter slots of one batch: the decoder's lora_a/lora_b are stacked along the clusters axis as
 *
 *   [ zero adapter | static LoRA | hypernetwork outputs: one per batch cluster in use, one per `request` row
 *     | ready-made factors: one per library / masks cluster in use, one per named adapter in use ]
 *
 * and each row's cluster_index points at its slot. Only what the batch needs is computed: clusters with no member
 * of their mode get no slot, and rows that share a cluster or a named adapter share its slot. A hypernetwork context
 * that the package's gate does not admit takes the static slot instead, and an admitted one carries the weight the
 * gate gives its generated update (see gate.ts).
 */
import type { LoraFactors } from '../engine/protocol.js';
import type { DomainMode } from './domains.js';
import type { ContextGate } from './gate.js';

/** Modes whose rows are clustered (each mode on its own: no mode ever shapes another's context). */
export const CLUSTERED_MODES = ['batch', 'library', 'library_weighted', 'masks'] as const;
export type ClusteredMode = (typeof CLUSTERED_MODES)[number];
/** `adapter`: a named adapter, chosen by the request's `model`. */
export type AdaptationMode = ClusteredMode | 'request' | 'static' | 'none' | 'adapter';

export function isClustered(mode: AdaptationMode): mode is ClusteredMode {
  return (CLUSTERED_MODES as readonly string[]).includes(mode);
}

export const ZERO_SLOT = 0;
export const STATIC_SLOT = 1;
export const FIRST_ADAPTER_SLOT = 2;

export interface SlotRow {
  mode: AdaptationMode;
  feature: Float32Array;
  /** Cluster within its mode's clustering (clustered modes only). */
  cluster: number;
  /** Prompt tokens behind the row's hypernetwork context: its cluster's members together, or its own prompt in `request` mode. */
  contextTokens: number;
  /** The named adapter's id and factors (mode `adapter` only). */
  adapter?: { id: string; factors: LoraFactors };
}

export interface SlotPlan {
  /** Adapter slot of each row. */
  slots: number[];
  /** Hypernetwork inputs, [count, dim] row-major: slot FIRST_ADAPTER_SLOT + i reads context i. */
  contexts: Float32Array;
  count: number;
  /** Weight of each context's generated update, [count]. */
  contextWeights: Float32Array;
  /** Slot FIRST_ADAPTER_SLOT + count + j holds factors[j]. */
  factors: LoraFactors[];
  /** Per row: its hypernetwork context's similarity to the nearest training domain (null: no context, or no gate). */
  similarities: Array<number | null>;
  /** Per row: the gate turned its context away, so the static LoRA served it. */
  gated: boolean[];
  /** Per row: the weight of its generated update (0 when gated; null: no hypernetwork context). */
  dynamicWeights: Array<number | null>;
}

/**
 * `clusterContexts.get(mode)[c]` is the context of cluster c of that mode; `makeFactors` builds a library / masks
 * cluster's adapter from its context.
 */
export function planSlots(
  rows: readonly SlotRow[],
  clusterContexts: ReadonlyMap<ClusteredMode, readonly Float32Array[]>,
  dim: number,
  makeFactors: (mode: DomainMode, context: Float32Array) => LoraFactors,
  gate: Pick<ContextGate, 'similarity' | 'admits' | 'weight'> | null = null,
): SlotPlan {
  const inputs: Float32Array[] = [];
  const weights: number[] = [];
  const factors: LoraFactors[] = [];
  const shared = new Map<string, { kind: 'hypernet' | 'factors'; index: number }>();
  const similarities = new Array<number | null>(rows.length).fill(null);
  const gated = new Array<boolean>(rows.length).fill(false);
  const dynamicWeights = new Array<number | null>(rows.length).fill(null);
  const hypernet = (row: number, key: string | null, context: Float32Array) => {
    let weight = 1;
    if (gate !== null) {
      const similarity = gate.similarity(context);
      similarities[row] = similarity;
      gated[row] = !gate.admits(similarity);
      weight = gate.weight(similarity, rows[row].contextTokens);
    }
    dynamicWeights[row] = weight;
    // a generated update weighted 0 (gated, or made from no tokens) is the static LoRA
    if (weight === 0) return STATIC_SLOT;
    const known = key === null ? undefined : shared.get(key);
    if (known !== undefined) return known;
    weights.push(weight);
    const entry = { kind: 'hypernet' as const, index: inputs.push(context) - 1 };
    if (key !== null) shared.set(key, entry);
    return entry;
  };
  const ready = (key: string, make: () => LoraFactors) => {
    let entry = shared.get(key);
    if (entry === undefined) {
      entry = { kind: 'factors', index: factors.push(make()) - 1 };
      shared.set(key, entry);
    }
    return entry;
  };
  const entries = rows.map((row, i) => {
    switch (row.mode) {
      case 'none':
        return ZERO_SLOT;
      case 'static':
        return STATIC_SLOT;
      case 'request':
        return hypernet(i, null, row.feature);
      case 'batch':
        return hypernet(i, `batch:${row.cluster}`, clusterContexts.get('batch')![row.cluster]);
      case 'adapter':
        return ready(`adapter:${row.adapter!.id}`, () => row.adapter!.factors);
      default: {
        const mode = row.mode;
        return ready(`${mode}:${row.cluster}`, () => makeFactors(mode, clusterContexts.get(mode)![row.cluster]));
      }
    }
  });
  const count = inputs.length;
  const slots = entries.map((e) => typeof e === 'number' ? e : FIRST_ADAPTER_SLOT + (e.kind === 'hypernet' ? e.index : count + e.index));
  const contexts = new Float32Array(Math.max(count, 1) * dim);
  inputs.forEach((v, i) => contexts.set(v, i * dim));
  return { slots, contexts, count, contextWeights: Float32Array.from(weights), factors, similarities, gated, dynamicWeights };
}
