/**
 * The KV cache as preallocated slots: one buffer per layer and per keys/values, laid out [slot, head, position,
 * head_dim], so that the slots of the rows in one decoder run are one contiguous stretch of each buffer. ONNX
 * Runtime reads CPU inputs in place, so handing it such a stretch costs nothing whatever is cached; a run returns
 * only its new positions, which are written into their slots here. A join or a leave touches only the slots it
 * concerns.
 */
export interface SlotShape {
  layers: number;
  heads: number;
  headDim: number;
  /** Positions per slot (the model's context). */
  capacity: number;
  slots: number;
}

export class KvSlots {
  /** past_key_0, past_value_0, past_key_1, ... each [slots, heads, capacity, headDim]. */
  readonly buffers: Float32Array[];
  private readonly slotSize: number;
  private readonly rowSize: number;

  constructor(readonly shape: SlotShape) {
    this.rowSize = shape.capacity * shape.headDim;
    this.slotSize = shape.heads * this.rowSize;
    this.buffers = Array.from({ length: 2 * shape.layers }, () => new Float32Array(shape.slots * this.slotSize));
  }

  /** Each buffer's stretch for slots [first, first + count), in buffer order. */
  view(first: number, count: number): Float32Array[] {
    return this.buffers.map((buffer) => buffer.subarray(first * this.slotSize, (first + count) * this.slotSize));
  }

  /**
   * Writes a run's new keys and values ([layers, batch, heads, seq, headDim] each) into the slots of its rows:
   * row b (slot first + b) gets its first newTokens[b] positions at pastLength[b].
   */
  write(first: number, keys: Float32Array, values: Float32Array, seq: number, pastLength: readonly number[], newTokens: readonly number[]): void {
    const { layers, heads, headDim } = this.shape;
    const batch = newTokens.length;
    for (let l = 0; l < layers; l++) {
      for (const [which, source] of [[0, keys], [1, values]] as const) {
        const target = this.buffers[2 * l + which];
        for (let b = 0; b < batch; b++) {
          const n = newTokens[b];
          if (n === 0) continue;
          for (let h = 0; h < heads; h++) {
            const from = (((l * batch + b) * heads + h) * seq) * headDim;
            const to = (first + b) * this.slotSize + h * this.rowSize + pastLength[b] * headDim;
            target.set(source.subarray(from, from + n * headDim), to);
          }
        }
      }
    }
  }

  /** Copies the first `length` positions of slot `from` into slot `to` (a row changing slots). */
  move(from: number, to: number, length: number): void {
    if (from === to || length === 0) return;
    for (const buffer of this.buffers) {
      for (let h = 0; h < this.shape.heads; h++) {
        const src = from * this.slotSize + h * this.rowSize;
        buffer.copyWithin(to * this.slotSize + h * this.rowSize, src, src + length * this.shape.headDim);
      }
    }
  }
}
