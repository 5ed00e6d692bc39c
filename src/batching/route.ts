/**
 * The way back from the engine for one batch: each row's events go to the request the row belongs to, and a
 * request is done once its last row has finished.
 */
import type { BatchSink } from '../engine/client.js';
import type { RowEvent, TokenLogprob } from '../engine/protocol.js';
import type { ServiceError } from '../errors.js';
import type { Metrics } from '../observability/metrics.js';
import type { Completion } from './completion.js';

/** One row of a batch: a prompt (choice) of a request. */
export interface Row {
  completion: Completion;
  choice: number;
}

export class BatchRoute implements BatchSink {
  private readonly rowsLeft = new Map<Completion, number>();
  private readonly finishedRows = new Set<number>();
  private readonly streaming = new Set<Completion>();
  /** performance.now() at each row's latest token. */
  private readonly lastTokenAt = new Map<number, number>();

  constructor(
    private readonly rows: readonly Row[],
    private readonly metrics: Metrics,
    /** Called once per row (its index) that finishes (not for those left when the batch ends). */
    private readonly onRowFinished: (row: number) => void,
  ) {
    for (const { completion } of rows) this.rowsLeft.set(completion, (this.rowsLeft.get(completion) ?? 0) + 1);
  }

  onAdapted(hypernetMs: number): void {
    this.metrics.adaptationSeconds.observe({ stage: 'hypernet' }, hypernetMs / 1000);
  }

  onPrompt(row: number, logprobs: TokenLogprob[]): void {
    const { completion, choice } = this.rows[row];
    completion.emit({ type: 'prompt', choice, logprobs });
  }

  onEvents(events: RowEvent[]): void {
    for (const event of events) {
      const { completion, choice } = this.rows[event.row];
      if (event.token !== undefined) this.countToken(event.row, completion);
      if (event.token !== undefined || event.text !== '') {
        completion.emit({ type: 'text', choice, text: event.text, ...(event.logprob ? { logprob: event.logprob } : {}) });
      }
      if (event.finish === undefined) continue;
      completion.emit({ type: 'finish', choice, reason: event.finish, completionTokens: event.completionTokens });
      this.finishedRows.add(event.row);
      this.onRowFinished(event.row);
      const left = this.rowsLeft.get(completion)! - 1;
      this.rowsLeft.set(completion, left);
      if (left === 0) completion.emit({ type: 'done' });
    }
  }

  /** The rows (indices) that had not finished when the batch ended. */
  unfinished(): number[] {
    return this.rows.flatMap((_, i) => (this.finishedRows.has(i) ? [] : [i]));
  }

  /** The batch failed: every request still open gets the error. */
  fail(error: ServiceError): void {
    for (const completion of this.rowsLeft.keys()) completion.emit({ type: 'error', error });
  }

  /** The batch ended: every request still open is done. */
  close(): void {
    for (const completion of this.rowsLeft.keys()) completion.emit({ type: 'done' });
  }

  private countToken(row: number, completion: Completion): void {
    const now = performance.now();
    const previous = this.lastTokenAt.get(row);
    this.lastTokenAt.set(row, now);
    const first = !this.streaming.has(completion);
    this.streaming.add(completion);
    this.metrics.observeToken(completion, first, previous === undefined ? null : (now - previous) / 1000);
  }
}
