/**
 * The batch prompts in flight, which each new window's batch prompts are clustered with. Under saturation, rows
 * free up one or two at a time, so a window alone would hold one or two requests and ChameleonLLM's batch
 * adaptation would silently turn into per-request adaptation. Clustering a window together with the batch prompts
 * the engine is serving at that moment keeps the clusters as large as a full batch's, however the room frees up and
 * whatever the throughput: the pool is exactly the batch the newcomers will share decoder runs with. Only
 * `batch`-mode prompts enter it: other modes never change a batch request's adapter.
 */
export class ContextPool<Key> {
  private readonly members = new Map<Key, { feature: Float32Array; tokens: number }>();

  /** The prompts in flight, in admission order: their features and prompt tokens. */
  entries(): Array<{ feature: Float32Array; tokens: number }> {
    return [...this.members.values()];
  }

  add(key: Key, feature: Float32Array, tokens: number): void {
    this.members.set(key, { feature, tokens });
  }

  /** The prompt finished (or failed): it no longer shapes the context of later windows. */
  remove(key: Key): void {
    this.members.delete(key);
  }
}
