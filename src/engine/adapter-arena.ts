/**
 * The decoder's stacked LoRA factors, kept in place between runs: a [capacity, rank, d_model] buffer for A and a
 * [capacity, vocab, rank] one for B, laid out as protocol.ts's adapter stack (the zero adapter at ZERO_ADAPTER, never
 * written since the buffers start at zero, the static LoRA at STATIC_ADAPTER, the batches' adapters from
 * FIRST_BATCH_ADAPTER on). Each batch's adapters take a contiguous range of free entries when it is admitted and give
 * it back when its last row finishes, and nothing else moves: rebuilding the whole stack at every admission and
 * retirement would copy every live adapter each time, a cost that grows with the batches in flight and sits between
 * decode steps. The buffers are rebuilt only when they run out of entries or when the largest rank in use changes;
 * adapters of a lower rank are zero-padded, which leaves their update unchanged.
 */
import type { AdapterPart } from './decode-loop.js';
import { FIRST_BATCH_ADAPTER, STATIC_ADAPTER } from './protocol.js';

export class AdapterArena {
  rank: number;
  capacity: number;
  a: Float32Array;
  b: Float32Array;
  /** Bumped whenever the buffers are replaced (so that wrappers around them are rebuilt). */
  version = 0;
  /** Live ranges: first index -> [entry count, largest rank]. */
  private readonly ranges = new Map<number, [number, number]>();

  constructor(private readonly dim: number, private readonly vocabSize: number, private readonly staticPart: AdapterPart, capacity = 16) {
    this.rank = staticPart.rank;
    this.capacity = Math.max(capacity, FIRST_BATCH_ADAPTER);
    this.a = new Float32Array(this.capacity * this.rank * dim);
    this.b = new Float32Array(this.capacity * vocabSize * this.rank);
    this.write(STATIC_ADAPTER, staticPart);
  }

  /** Places the parts at consecutive indices; returns the first. They stay there until `release(first)`. */
  place(parts: readonly AdapterPart[]): number {
    const count = parts.reduce((n, p) => n + p.count, 0);
    const rank = parts.reduce((r, p) => Math.max(r, p.rank), 0);
    if (count === 0) return FIRST_BATCH_ADAPTER;
    if (rank > this.rank) this.rebuild(rank, this.capacity);
    let first = this.findFree(count);
    if (first < 0) {
      this.rebuild(this.rank, Math.max(2 * this.capacity, this.highWater() + count));
      first = this.findFree(count);
    }
    let index = first;
    for (const part of parts) {
      this.write(index, part);
      index += part.count;
    }
    this.ranges.set(first, [count, rank]);
    return first;
  }

  /** The range starting at `first` is free again; the buffers shrink to a lower rank when no adapter needs this one. */
  release(first: number): void {
    if (!this.ranges.delete(first)) return;
    const needed = [...this.ranges.values()].reduce((r, [, rank]) => Math.max(r, rank), this.staticPart.rank);
    if (needed < this.rank) this.rebuild(needed, this.capacity);
  }

  /** Entries in use or below a range in use (the part of the buffers a run can touch). */
  highWater(): number {
    let top = FIRST_BATCH_ADAPTER;
    for (const [first, [count]] of this.ranges) top = Math.max(top, first + count);
    return top;
  }

  private findFree(count: number): number {
    const taken = [...this.ranges].map(([first, [n]]) => [first, first + n]).sort((x, y) => x[0] - y[0]);
    let at = FIRST_BATCH_ADAPTER;
    for (const [start, end] of taken) {
      if (start - at >= count) return at;
      at = Math.max(at, end);
    }
    return at + count <= this.capacity ? at : -1;
  }

  /** Writes a part's adapters at indices first, first + 1, ..., zero-padding their rank to the buffers'. */
  private write(first: number, part: AdapterPart): void {
    const { dim: D, vocabSize: V, rank: R } = this;
    const r = part.rank;
    for (let k = 0; k < part.count; k++) {
      const index = first + k;
      this.a.fill(0, index * R * D, (index + 1) * R * D);
      this.a.set(part.a.subarray(k * r * D, (k + 1) * r * D), index * R * D);
      if (r === R) {
        this.b.set(part.b.subarray(k * V * r, (k + 1) * V * r), index * V * R);
        continue;
      }
      const to = this.b;
      const from = part.b;
      for (let v = 0; v < V; v++) {
        const src = (k * V + v) * r;
        const dst = (index * V + v) * R;
        for (let j = 0; j < r; j++) to[dst + j] = from[src + j];
        for (let j = r; j < R; j++) to[dst + j] = 0;
      }
    }
  }

  /** New buffers of `rank` and `capacity`, every live entry copied to the same index. */
  private rebuild(rank: number, capacity: number): void {
    const { dim: D, vocabSize: V } = this;
    const old = { a: this.a, b: this.b, rank: this.rank };
    const keep = Math.min(old.rank, rank);
    this.a = new Float32Array(capacity * rank * D);
    this.b = new Float32Array(capacity * V * rank);
    const copy = (index: number) => {
      for (let j = 0; j < keep; j++) this.a.set(old.a.subarray((index * old.rank + j) * D, (index * old.rank + j + 1) * D), (index * rank + j) * D);
      for (let v = 0; v < V; v++) {
        const src = (index * V + v) * old.rank;
        const dst = (index * V + v) * rank;
        for (let j = 0; j < keep; j++) this.b[dst + j] = old.b[src + j];
      }
    };
    copy(STATIC_ADAPTER);
    for (const [first, [count]] of this.ranges) for (let index = first; index < first + count; index++) copy(index);
    this.rank = rank;
    this.capacity = capacity;
    this.version++;
  }
}
