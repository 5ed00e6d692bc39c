/**
 * The KV cache as preallocated slots: one buffer per layer and per keys/values, laid out [slot, head, position,
 * head_dim], so that the slots of the rows in one decoder run are one contiguous stretch of each buffer. ONNX
 * Runtime reads CPU inputs in place, so handing it such a stretch costs nothing whatever is cached; a run returns
 * only its new positions, which are written into their slots here. A join or a leave touches only the slots it
 * concerns.
 *
 * The decoder attends over every position of the slots it is handed (masking those past each row's length), so a step
 * costs the same at any cached length but reads each slot's whole stride, and a shorter stride makes every step
 * cheaper. The buffers are therefore laid out with the shortest stride every row fits in, from a ladder: the capacity
 * (MAX_MODEL_LEN), half of it, and further halvings while they are at least MIN_STRIDE positions (a 4096-position
 * cache: 128, 256, ..., 4096; the default package's 256: 128 and 256). A run that needs more grows the layout
 * (`reserve`, before the run); the layout changes in place, copying only the positions the slots hold. It shrinks to a
 * shorter stride once every row fits in three quarters of it (`trim`), so that rows near a boundary do not make it
 * change at every step.
 */
export interface SlotShape {
  layers: number;
  /** Key/value heads (n_kv_head). */
  heads: number;
  headDim: number;
  /** Positions per slot (MAX_MODEL_LEN). */
  capacity: number;
  slots: number;
}

/** Strides below half the capacity stop at this many positions (shorter ones save little and relayout more often). */
export const MIN_STRIDE = 128;

/** The strides a cache of `capacity` positions per slot is laid out with, shortest first; the last is the capacity. */
export function strideLadder(capacity: number): number[] {
  const strides = [capacity];
  let next = Math.ceil(capacity / 2);
  if (next < capacity) strides.unshift(next);
  for (next = Math.ceil(next / 2); next >= MIN_STRIDE && next < strides[0]; next = Math.ceil(next / 2)) strides.unshift(next);
  return strides;
}

/** Bytes of the cache's buffers: slots x layers x (keys, values) x heads x positions x head_dim float32 values. */
export function kvCacheBytes(shape: SlotShape): number {
  return shape.slots * shape.layers * 2 * shape.heads * shape.capacity * shape.headDim * 4;
}

export class KvSlots {
  /** past_key_0, past_value_0, past_key_1, ... each [slots, heads, stride, headDim] in its first part. */
  readonly buffers: Float32Array[];
  /** Strides the layout can take, shortest first; the last is the capacity. */
  private readonly strides: readonly number[];
  private current: number;
  /** Positions written into each slot (a slot whose row left keeps its count until it is written again). */
  private readonly filled: Int32Array;

  constructor(readonly shape: SlotShape) {
    this.strides = strideLadder(shape.capacity);
    this.current = this.strides[0];
    this.filled = new Int32Array(shape.slots);
    const size = shape.slots * shape.heads * shape.capacity * shape.headDim;
    this.buffers = Array.from({ length: 2 * shape.layers }, () => new Float32Array(size));
  }

  /** Positions per slot in the current layout: the cache axis of the decoder's inputs. */
  get stride(): number {
    return this.current;
  }

  /** Floats per (slot, head) block in the current layout. */
  private get rowSize(): number {
    return this.current * this.shape.headDim;
  }

  private get slotSize(): number {
    return this.shape.heads * this.rowSize;
  }

  /** Each buffer's stretch for slots [first, first + count), in buffer order ([count, heads, stride, headDim]). */
  view(first: number, count: number): Float32Array[] {
    const size = this.slotSize;
    return this.buffers.map((buffer) => buffer.subarray(first * size, (first + count) * size));
  }

  /** Makes every slot hold at least `positions` positions (the longest a run will read or write). */
  reserve(positions: number): void {
    if (positions <= this.current) return;
    const stride = this.strides.find((s) => s >= positions);
    if (stride === undefined) throw new RangeError(`${positions} positions do not fit a cache slot of ${this.shape.capacity}`);
    this.relayout(stride);
  }

  /** Goes back to the shortest stride whose three quarters hold the longest row in the cache, when it is shorter than the current one. */
  trim(longestRow: number): void {
    const stride = this.strides.find((s) => longestRow <= Math.floor((s * 3) / 4));
    if (stride !== undefined && stride < this.current) this.relayout(stride);
  }

  /**
   * Re-lays every slot's written positions out at `stride`, in place: growing walks the (slot, head) blocks from the
   * last, shrinking from the first, so that no block is overwritten before it is copied.
   */
  private relayout(stride: number): void {
    const { heads, headDim, slots } = this.shape;
    const from = this.current;
    const blocks = slots * heads;
    for (const buffer of this.buffers) {
      for (let i = 0; i < blocks; i++) {
        const block = stride > from ? blocks - 1 - i : i;
        const length = Math.min(this.filled[Math.floor(block / heads)], from, stride) * headDim;
        if (length === 0) continue;
        const source = block * from * headDim;
        buffer.copyWithin(block * stride * headDim, source, source + length);
      }
    }
    this.current = stride;
  }

  /**
   * Writes a run's new keys and values ([layers, batch, heads, seq, headDim] each) into the slots of its rows:
   * row b (slot first + b) gets its first newTokens[b] positions at pastLength[b] (the run reserved room for them).
   */
  write(first: number, keys: Float32Array, values: Float32Array, seq: number, pastLength: readonly number[], newTokens: readonly number[]): void {
    const { layers, heads, headDim } = this.shape;
    const batch = newTokens.length;
    const { rowSize, slotSize } = this;
    for (let l = 0; l < layers; l++) {
      for (const [which, source] of [[0, keys], [1, values]] as const) {
        const target = this.buffers[2 * l + which];
        for (let b = 0; b < batch; b++) {
          const n = newTokens[b];
          if (n === 0) continue;
          for (let h = 0; h < heads; h++) {
            const from = (((l * batch + b) * heads + h) * seq) * headDim;
            const to = (first + b) * slotSize + h * rowSize + pastLength[b] * headDim;
            target.set(source.subarray(from, from + n * headDim), to);
          }
        }
      }
    }
    for (let b = 0; b < batch; b++) if (newTokens[b] > 0) this.filled[first + b] = pastLength[b] + newTokens[b];
  }

  /** Copies the first `length` positions of slot `from` into slot `to` (a row changing slots). */
  move(from: number, to: number, length: number): void {
    if (from === to) return;
    this.filled[to] = length;
    if (length === 0) return;
    const { rowSize, slotSize } = this;
    for (const buffer of this.buffers) {
      for (let h = 0; h < this.shape.heads; h++) {
        const src = from * slotSize + h * rowSize;
        buffer.copyWithin(to * slotSize + h * rowSize, src, src + length * this.shape.headDim);
      }
    }
  }
}
