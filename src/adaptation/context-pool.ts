/**
 * The recent `batch`-mode prompts a new window is clustered with. Under saturation, rows free up one or two at a
 * time, so a window alone would hold one or two requests and ChameleonLLM's batch adaptation would silently turn
 * into per-request adaptation. Clustering each window together with the prompts admitted just before it (within
 * `windowMs`, at most `capacity` of them) keeps the clusters that form a context as large as in a full window,
 * however the engine's room frees up. Only `batch`-mode prompts enter the pool: other modes never change a batch
 * request's adapter.
 */
export interface ContextPoolOptions {
  /** Most recent prompts kept (MAX_BATCH_SIZE: a window never clusters more prompts than that). */
  capacity: number;
  /** How long an admitted prompt stays a neighbour of later windows, ms. */
  windowMs: number;
}

export class ContextPool {
  private entries: Array<{ feature: Float32Array; at: number }> = [];

  constructor(private readonly options: ContextPoolOptions) {}

  /** Features of at most `max` prompts admitted within the window before `now`, most recent last. */
  recent(now: number, max: number): Float32Array[] {
    this.entries = this.entries.filter((e) => now - e.at <= this.options.windowMs);
    return this.entries.slice(Math.max(0, this.entries.length - max)).map((e) => e.feature);
  }

  add(features: readonly Float32Array[], now: number): void {
    for (const feature of features) this.entries.push({ feature, at: now });
    if (this.entries.length > this.options.capacity) this.entries.splice(0, this.entries.length - this.options.capacity);
  }
}
