/**
 * Adapter slots of one batch: the decoder's lora_a/lora_b are stacked along the clusters axis as
 *
 *   [ zero adapter | static LoRA | one per batch cluster in use | one per `request`-mode row ]
 *
 * and each row's cluster_index points at its slot. Only the hypernetwork outputs the batch needs are
 * computed: clusters with no `batch`-mode member get no slot.
 */
export type AdaptationMode = 'batch' | 'request' | 'static' | 'none';

export const ZERO_SLOT = 0;
export const STATIC_SLOT = 1;
export const FIRST_HYPERNET_SLOT = 2;

export interface SlotRow {
  mode: AdaptationMode;
  feature: Float32Array;
  cluster: number;
}

export interface SlotPlan {
  /** Adapter slot of each row. */
  slots: number[];
  /** Hypernetwork inputs, [count, dim] row-major: slot FIRST_HYPERNET_SLOT + i reads context i. */
  contexts: Float32Array;
  count: number;
}

export function planSlots(rows: readonly SlotRow[], clusterContexts: readonly Float32Array[], dim: number): SlotPlan {
  const inputs: Float32Array[] = [];
  const clusterSlot = new Map<number, number>();
  const slots = rows.map((row) => {
    switch (row.mode) {
      case 'none':
        return ZERO_SLOT;
      case 'static':
        return STATIC_SLOT;
      case 'batch': {
        let slot = clusterSlot.get(row.cluster);
        if (slot === undefined) {
          slot = FIRST_HYPERNET_SLOT + inputs.length;
          clusterSlot.set(row.cluster, slot);
          inputs.push(clusterContexts[row.cluster]);
        }
        return slot;
      }
      case 'request':
        inputs.push(row.feature);
        return FIRST_HYPERNET_SLOT + inputs.length - 1;
    }
  });
  const contexts = new Float32Array(Math.max(inputs.length, 1) * dim);
  inputs.forEach((v, i) => contexts.set(v, i * dim));
  return { slots, contexts, count: inputs.length };
}
