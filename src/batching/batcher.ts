/**
 * The time-window batcher. A window opens with the oldest waiting request and closes when it holds
 * maxBatchSize prompts or maxWaitMs after that request arrived, whichever comes first, or at once when the engine
 * is idle (with idle dispatch on: waiting for companions then only delays the first token, and later windows are
 * clustered with this one while it is in flight); it then hands over as many whole requests as the engine has
 * room for. The window does not close early just because the engine's
 * free room is small: under steady load rows finish one at a time, and closing at once would shrink every
 * window to a single request, turning batch adaptation into per-request adaptation.
 */
import type { BoundedQueue, Queued } from './queue.js';

export interface BatcherOptions {
  maxBatchSize: number;
  maxWaitMs: number;
}

export class WindowBatcher<T extends Queued> {
  constructor(
    private readonly queue: BoundedQueue<T>,
    private readonly options: BatcherOptions,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /**
   * The next batch: whole requests, at most `room()` prompts (and never more than maxBatchSize); empty when the
   * oldest request alone needs more room than there is; null once the queue is closed and empty.
   */
  async next(room: () => number = () => this.options.maxBatchSize, idle: () => boolean = () => false): Promise<T[] | null> {
    const limit = () => Math.min(room(), this.options.maxBatchSize);
    while (this.queue.length === 0) {
      if (this.queue.isClosed) return null;
      await this.queue.waitForChange();
    }
    const deadline = this.queue.peek()!.arrivedAt + this.options.maxWaitMs;
    while (this.queue.rows < this.options.maxBatchSize && !this.queue.isClosed && !idle()) {
      const left = deadline - this.now();
      if (left <= 0) break;
      await this.queue.waitForChange(left);
      if (this.queue.length === 0) return this.next(room, idle); // everything waiting was withdrawn
    }
    const batch: T[] = [];
    let rows = 0;
    const max = limit();
    for (let item = this.queue.peek(); item !== undefined; item = this.queue.peek()) {
      if (rows + item.rows > max) break;
      batch.push(this.queue.shift()!);
      rows += item.rows;
    }
    return batch;
  }
}
