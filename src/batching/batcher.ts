/**
 * The time-window batcher. A window opens with the oldest waiting request and closes when it holds
 * maxBatchSize prompts or maxWaitMs after that request arrived, whichever comes first. The scheduler pulls
 * the next batch when the engine is free, so requests that waited behind a running batch leave at once.
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

  /** The next batch (whole requests, at most maxBatchSize prompts), or null once the queue is closed and empty. */
  async next(): Promise<T[] | null> {
    while (this.queue.length === 0) {
      if (this.queue.isClosed) return null;
      await this.queue.waitForChange();
    }
    const deadline = this.queue.peek()!.arrivedAt + this.options.maxWaitMs;
    while (this.queue.rows < this.options.maxBatchSize && !this.queue.isClosed) {
      const left = deadline - this.now();
      if (left <= 0) break;
      await this.queue.waitForChange(left);
      if (this.queue.length === 0) return this.next(); // everything waiting was withdrawn
    }
    const batch: T[] = [];
    let rows = 0;
    for (let item = this.queue.peek(); item !== undefined; item = this.queue.peek()) {
      if (batch.length > 0 && rows + item.rows > this.options.maxBatchSize) break;
      batch.push(this.queue.shift()!);
      rows += item.rows;
    }
    return batch;
  }
}
