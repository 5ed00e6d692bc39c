/**
 * The admission queue: bounded by the number of prompts (rows) waiting, FIFO, with a way to wait for the next
 * arrival. It only says whether an item got in; the refusal a client sees is written by the API's admission.
 */

export interface Queued {
  /** Prompts this item brings to a batch. */
  readonly rows: number;
  /** performance.now() at admission. */
  readonly arrivedAt: number;
}

/** What `push` did: queued, or refused because the queue is full or closed. */
export type QueueOutcome = 'queued' | 'full' | 'closed';

export class BoundedQueue<T extends Queued> {
  private items: T[] = [];
  private waitingRows = 0;
  private waiters: Array<() => void> = [];
  private closed = false;

  constructor(readonly capacity: number) {}

  get rows(): number {
    return this.waitingRows;
  }

  get length(): number {
    return this.items.length;
  }

  /** Prompts that would be admitted now (0: not even a one-prompt request). */
  get room(): number {
    return Math.max(0, this.capacity - this.waitingRows);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Queues `item` unless the queue is closed or has no room for its rows. */
  push(item: T): QueueOutcome {
    if (this.closed) return 'closed';
    if (this.waitingRows + item.rows > this.capacity) return 'full';
    this.items.push(item);
    this.waitingRows += item.rows;
    this.wake();
    return 'queued';
  }

  peek(): T | undefined {
    return this.items[0];
  }

  shift(): T | undefined {
    const item = this.items.shift();
    if (item !== undefined) this.waitingRows -= item.rows;
    return item;
  }

  /** Removes a waiting item (its caller gave up); false when it already left the queue. */
  remove(item: T): boolean {
    const index = this.items.indexOf(item);
    if (index < 0) return false;
    this.items.splice(index, 1);
    this.waitingRows -= item.rows;
    return true;
  }

  /** Resolves on the next push or close, or after `timeoutMs` (Infinity = no timeout). */
  waitForChange(timeoutMs = Infinity): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        if (timer !== undefined) clearTimeout(timer);
        resolve();
      };
      this.waiters.push(done);
      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== done);
          resolve();
        }, Math.max(0, timeoutMs));
      }
    });
  }

  /** No more admissions; items already queued stay to be served. */
  close(): void {
    this.closed = true;
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
