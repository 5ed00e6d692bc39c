/**
 * The generation loop inside the worker: continuous batching over a slot KV cache.
 *
 * Each batch brings its rows and one hypernetwork run for its cluster contexts. Every row then owns a cache slot
 * (kv-slots.ts) for its whole life:
 *
 *   slots [0, running)                  rows that decode: ONE decoder run per step serves them all
 *   slots [prefillStart, ...)           rows whose prompt is being prefilled, first come first served
 *
 * A loop turn is one decode step for the running rows, then one prefill chunk of at most `prefillChunkTokens`
 * (rows × padded width) for the rows at the front of the prefill queue, so a long prompt never stalls the
 * running streams for more than one chunk (vLLM's chunked prefill). A prefill run asks for logits only where
 * they are used: a row's last prompt position, or every position when prompt logprobs are wanted. A row whose
 * prefill completes joins the running stretch; a row that finishes hands its slot to the last running row, so
 * each join or leave copies at most one slot and no step copies the cache.
 *
 * Each row reads its own adapter in the stacked factors
 *
 *   [ zero | static | batch 1's hypernetwork outputs, then its ready-made factors | batch 2's ... ]
 *
 * at the largest rank among them (lower ranks are zero-padded, which leaves their update unchanged), scaled by
 * its own adaptation strength inside the same decoder run.
 * ONNX Runtime sits behind `Runtime` (runtime.ts), so this file is plain TypeScript.
 */
import {
  FIRST_BATCH_ADAPTER, type Batch, type BatchStats, type EngineSettings, type FinishReason, type ForwardListener, type RowEvent, type RowSpec,
  type TokenLogprob, type Waiter,
} from './protocol.js';
import { RowPenalties } from './penalties.js';
import { argmax, isGreedy, Random, SamplingScratch, sampleFromProbs, tokenLogprobs } from './sampling.js';
import { TextTracker } from './stopping.js';

/** `count` adapters of one rank: a [count, rank, d_model] and b [count, vocab, rank], row-major. */
export interface AdapterPart {
  readonly count: number;
  readonly rank: number;
  readonly a: Float32Array;
  readonly b: Float32Array;
}

/** One decoder run over the cache slots [firstSlot, firstSlot + rows): row b owns slot firstSlot + b. */
export interface StepFeeds {
  firstSlot: number;
  rows: number;
  /** Padded width of the new tokens (rows are right-padded). */
  seq: number;
  /** [rows, seq] */
  inputIds: BigInt64Array;
  /** [rows, seq] */
  positionIds: BigInt64Array;
  /** Positions already cached per row; its new tokens are written after them. */
  pastLength: number[];
  /** Real (unpadded) new tokens per row. */
  newTokens: number[];
  /** Adapter of each row in the stack. */
  clusterIndex: BigInt64Array;
  /** Strength of each row's low-rank update (adaptation_scale). */
  rowScale: Float32Array;
  /** Flat positions (b * seq + t) whose logits are wanted, in this order. */
  logitsIndex: number[];
}

export interface Runtime {
  readonly vocabSize: number;
  /** Cache slots: the most rows that can be prefilled or decoded at once. */
  readonly slotCount: number;
  /**
   * One hypernetwork run: LoRA factors for `count` contexts ([count, d_model] row-major), the generated update of
   * context i weighted by weights[i] (a network on static keeps its static part whole).
   */
  hypernet(contexts: Float32Array, count: number, weights: Float32Array): Promise<AdapterPart>;
  /**
   * Puts the parts into the decoder's adapter stack ([zero, static, ...] along the clusters axis, at the largest rank
   * in use) at consecutive indices, and returns the first; they stay there until `releaseAdapters(first)`.
   */
  placeAdapters(parts: readonly AdapterPart[]): number;
  releaseAdapters(first: number): void;
  /** Runs the decoder, writes each row's new keys and values into its slot; logits [logitsIndex.length, V]. */
  step(feeds: StepFeeds): Promise<Float32Array>;
  /** softmax(logits row / temperature) of the given logits rows: [rows.length, V]. */
  softmax(logits: Float32Array, rows: readonly number[], temperatures: readonly number[]): Promise<Float32Array>;
  /** A row changes slots: its first `length` cached positions move with it. */
  moveSlot(from: number, to: number, length: number): void;
  /** No row holding a slot holds, or will write in its next run, more than `longestRow` positions (the cache may shrink its layout). */
  trimCache(longestRow: number): void;
}

export interface TextCodec {
  /** Whether a generated token ends the text (any of the package's end-of-text ids). */
  isEos(id: number): boolean;
  readonly eosIds: readonly number[];
  /** The bytes of a generated token in the text (none for special tokens). */
  bytes(id: number): Uint8Array;
  piece(id: number): string;
}

export interface BatchHooks {
  onAdapted(hypernetMs: number): void;
  onPrompt(row: number, logprobs: TokenLogprob[]): void;
  /** This batch's events of one decoder run (prefill or decode step). */
  onEvents(events: RowEvent[]): void;
  isCancelled(row: number): boolean;
}

/** The settings the loop reads. */
export type LoopSettings = Pick<EngineSettings, 'prefillChunkTokens'>;

/** Where the loop reports its runs, and its clock and yield (tests script them). */
export interface LoopHooks {
  onForward?: ForwardListener;
  now?: () => number;
  yieldToEvents?: () => Promise<void>;
}

/** A batch waiting for its hypernetwork run. */
interface Submitted extends Waiter<BatchStats> {
  batch: Batch;
  hooks: BatchHooks;
}

/** A batch the loop runs: from its hypernetwork run until its last row finishes. */
interface ActiveBatch extends Waiter<BatchStats> {
  hooks: BatchHooks;
  /** The hypernetwork's outputs for the batch's contexts, then its ready-made factors: its adapters FIRST_BATCH_ADAPTER, FIRST_BATCH_ADAPTER + 1, ... in order. */
  parts: AdapterPart[];
  /** Stack index of this batch's first adapter. */
  base: number;
  /** Rows not finished yet. */
  live: number;
  stats: BatchStats;
}

interface Row {
  batch: ActiveBatch;
  row: number;
  spec: RowSpec;
  /** The KV-cache slot holding the row's positions (-1 while it waits for one). */
  cacheSlot: number;
  /** Positions in the cache: prompt tokens prefilled so far, then generated tokens fed back. */
  length: number;
  lastToken: number;
  generated: number;
  rng: Random;
  /** Its logit_bias and penalties with the tokens they count; null when it has none (it then pays nothing for them). */
  penalties: RowPenalties | null;
  text: TextTracker;
  promptLogprobs: TokenLogprob[];
  done: boolean;
}

/** One row's part of a prefill run: its logits rows [first, first + count) in the output, and whether its prompt ends there. */
interface PrefillPlan {
  first: number;
  count: number;
  completes: boolean;
}

const PAD_ID = 0n;

export class DecodeLoop {
  private readonly scratch: SamplingScratch;
  private readonly prefillChunkTokens: number;
  private readonly onForward: ForwardListener;
  private readonly now: () => number;
  private readonly yieldToEvents: () => Promise<void>;
  private pending: Submitted[] = [];
  /** Rows with adapters, waiting for a free slot. */
  private waiting: Row[] = [];
  /** Rows in prefill, in slots prefillStart, prefillStart + 1, ... */
  private prefilling: Row[] = [];
  private prefillStart = 0;
  /** Decoding rows: running[i] owns slot i. */
  private running: Row[] = [];
  private batches: ActiveBatch[] = [];
  private pumping: Promise<void> | null = null;

  constructor(private readonly runtime: Runtime, private readonly codec: TextCodec, settings: LoopSettings, hooks: LoopHooks = {}) {
    this.scratch = new SamplingScratch(runtime.vocabSize);
    this.prefillChunkTokens = settings.prefillChunkTokens;
    this.onForward = hooks.onForward ?? (() => {});
    this.now = hooks.now ?? (() => performance.now());
    this.yieldToEvents = hooks.yieldToEvents ?? (() => new Promise((resolve) => setImmediate(resolve)));
  }

  /** Resolves when no batch is left (pending or running). */
  async drained(): Promise<void> {
    while (this.pumping !== null) await this.pumping;
  }

  /** Adds a batch; its rows are prefilled and join the running decode. Resolves when all its rows have finished. */
  submit(batch: Batch, hooks: BatchHooks): Promise<BatchStats> {
    return new Promise((resolve, reject) => {
      this.pending.push({ batch, hooks, resolve, reject });
      this.pumping ??= this.pump().finally(() => {
        this.pumping = null;
      });
    });
  }

  private async pump(): Promise<void> {
    for (;;) {
      while (this.pending.length > 0) await this.admit(this.pending.shift()!);
      this.placeWaiting();
      if (this.running.length === 0 && this.prefilling.length === 0) {
        if (this.pending.length === 0) return;
        continue;
      }
      try {
        // a prefilling row counts with its next chunk, so the layout does not shrink just before that chunk grows it
        const reach = (r: Row) => Math.min(r.spec.promptIds.length, r.length + this.prefillChunkTokens);
        this.runtime.trimCache(Math.max(0, ...this.running.map((r) => r.length), ...this.prefilling.map(reach)));
        if (this.running.length > 0) await this.decodeStep();
        if (this.prefilling.length > 0) await this.prefillChunk();
      } catch (error) {
        this.failAll(error as Error);
      }
      await this.yieldToEvents();
    }
  }

  /** The batch's hypernetwork run; its rows then wait for slots. */
  private async admit(entry: Submitted): Promise<void> {
    const { batch, hooks } = entry;
    const stats: BatchStats = { batchId: batch.batchId, rows: batch.rows.length, hypernetMs: 0, prefillMs: 0, decodeSteps: 0, decodeMs: 0, tokens: 0 };
    const active: ActiveBatch = { hooks, parts: [], base: 0, live: batch.rows.length, stats, resolve: entry.resolve, reject: entry.reject };
    try {
      const t = this.now();
      if (batch.contextCount > 0) active.parts.push(await this.runtime.hypernet(batch.contexts, batch.contextCount, batch.contextWeights));
      for (const f of batch.factors) active.parts.push({ count: 1, ...f });
      stats.hypernetMs = this.now() - t;
      hooks.onAdapted(stats.hypernetMs);
    } catch (error) {
      entry.reject(error as Error);
      return;
    }
    if (batch.rows.length === 0) {
      entry.resolve(stats);
      return;
    }
    if (active.parts.length > 0) active.base = this.runtime.placeAdapters(active.parts);
    this.batches.push(active);
    for (const [row, spec] of batch.rows.entries()) {
      this.waiting.push({
        batch: active, row, spec, cacheSlot: -1, length: 0, lastToken: 0, generated: 0, rng: new Random(spec.sampling.seed),
        penalties: spec.sampling.penalties === undefined ? null : new RowPenalties(spec.sampling.penalties, spec.promptIds),
        text: new TextTracker((id) => this.codec.bytes(id), spec.sampling.stop), promptLogprobs: [], done: false,
      });
    }
  }

  /** Gives free slots to waiting rows, first come first served, at the end of the prefill stretch. */
  private placeWaiting(): void {
    while (this.waiting.length > 0 && this.running.length + this.prefilling.length < this.runtime.slotCount) {
      if (this.prefilling.length === 0) this.prefillStart = this.running.length;
      if (this.prefillStart + this.prefilling.length >= this.runtime.slotCount) this.compactPrefill();
      const row = this.waiting.shift()!;
      row.cacheSlot = this.prefillStart + this.prefilling.length;
      this.prefilling.push(row);
    }
  }

  /** Moves the prefill stretch down to just after the running rows (closing the gaps left by rows that finished). */
  private compactPrefill(): void {
    this.prefillStart = this.running.length;
    this.prefilling.forEach((row, i) => this.moveRow(row, this.prefillStart + i));
  }

  private moveRow(row: Row, slot: number): void {
    if (slot === row.cacheSlot) return;
    this.runtime.moveSlot(row.cacheSlot, slot, row.length);
    row.cacheSlot = slot;
  }

  /** Where the row's adapter sits in the stack: the shared entries stay put, a batch's own sit from its base on. */
  private stackIndex(row: Row): bigint {
    const index = row.spec.adapterIndex;
    return BigInt(index < FIRST_BATCH_ADAPTER ? index : row.batch.base + index - FIRST_BATCH_ADAPTER);
  }

  /**
   * The rows of the next prefill run: from the front of the queue, while rows × width fits the token budget.
   * Only the last row chosen may stop short of its prompt's end, so prefills complete in queue order.
   */
  private chooseChunk(): { rows: Row[]; width: number } {
    const budget = this.prefillChunkTokens;
    const rows: Row[] = [];
    let width = 0;
    for (const row of this.prefilling) {
      const remaining = row.spec.promptIds.length - row.length;
      const grown = Math.max(width, Math.min(remaining, budget));
      if (rows.length > 0 && (rows.length + 1) * grown > budget) break;
      rows.push(row);
      width = grown;
      if (remaining > width) break;
    }
    return { rows, width };
  }

  /** The decoder inputs of a prefill run over `rows`, `width` new tokens wide, and each row's part of its output. */
  private prefillFeeds(rows: readonly Row[], width: number): { feeds: StepFeeds; plan: PrefillPlan[] } {
    const B = rows.length;
    const inputIds = new BigInt64Array(B * width).fill(PAD_ID);
    const positionIds = new BigInt64Array(B * width);
    const newTokens: number[] = [];
    const logitsIndex: number[] = [];
    const plan: PrefillPlan[] = [];
    rows.forEach((row, b) => {
      const ids = row.spec.promptIds;
      const n = Math.min(ids.length - row.length, width);
      for (let j = 0; j < n; j++) {
        inputIds[b * width + j] = BigInt(ids[row.length + j]);
        positionIds[b * width + j] = BigInt(row.length + j);
      }
      newTokens.push(n);
      const completes = row.length + n === ids.length;
      const first = logitsIndex.length;
      if (row.spec.promptLogprobs) for (let j = 0; j < n; j++) logitsIndex.push(b * width + j);
      else if (completes) logitsIndex.push(b * width + n - 1);
      plan.push({ first, count: logitsIndex.length - first, completes });
    });
    const feeds: StepFeeds = {
      firstSlot: rows[0].cacheSlot, rows: B, seq: width, inputIds, positionIds, pastLength: rows.map((r) => r.length), newTokens,
      clusterIndex: BigInt64Array.from(rows, (r) => this.stackIndex(r)), rowScale: Float32Array.from(rows, (r) => r.spec.adaptationScale), logitsIndex,
    };
    return { feeds, plan };
  }

  /** One prefill run over the front of the prefill queue. */
  private async prefillChunk(): Promise<void> {
    const { rows, width } = this.chooseChunk();
    const B = rows.length;
    const { feeds, plan } = this.prefillFeeds(rows, width);
    const { newTokens } = feeds;
    const t = this.now();
    const logits = await this.runtime.step(feeds);
    const ms = this.now() - t;
    this.onForward('prefill', ms, B, newTokens.reduce((a, b) => a + b, 0));

    const events = new Map<ActiveBatch, RowEvent[]>();
    const completed: Row[] = [];
    const advancing: Array<{ row: Row; at: number }> = [];
    rows.forEach((row, b) => {
      const { first, count, completes } = plan[b];
      row.batch.stats.prefillMs += ms / B;
      if (row.spec.promptLogprobs) this.collectPromptLogprobs(row, logits, first, newTokens[b]);
      row.length += newTokens[b];
      if (!completes) return;
      completed.push(row);
      const out = events.get(row.batch) ?? [];
      events.set(row.batch, out);
      if (row.spec.promptLogprobs) row.batch.hooks.onPrompt(row.row, row.promptLogprobs);
      if (row.batch.hooks.isCancelled(row.row)) this.finish(row, 'cancelled', out);
      else if (row.spec.sampling.maxTokens === 0) this.finish(row, 'length', out);
      else advancing.push({ row, at: first + count - 1 });
    });
    await this.advanceAll(advancing, logits, events);
    for (const row of completed) {
      this.prefilling.shift();
      if (!row.done) {
        this.moveRow(row, this.running.length);
        this.running.push(row);
      }
    }
    this.prefillStart = this.prefilling.length > 0 ? this.prefilling[0].cacheSlot : this.running.length;
    for (const [batch, list] of events) batch.hooks.onEvents(list);
    this.retire(completed.filter((r) => r.done));
  }

  /** Prompt logprobs from a prefill run's logits: the logits at position j score the prompt token j + 1. */
  private collectPromptLogprobs(row: Row, logits: Float32Array, first: number, n: number): void {
    const V = this.runtime.vocabSize;
    const ids = row.spec.promptIds;
    const lowest = row.spec.bosAdded ? 1 : 0;
    if (row.length === 0 && lowest === 0) row.promptLogprobs.push({ token: this.codec.piece(ids[0]), logprob: null, top: null });
    for (let j = 0; j < n; j++) {
      const next = row.length + j + 1;
      if (next >= ids.length || next < lowest) continue;
      const lp = tokenLogprobs(logits, (first + j) * V, V, ids[next], row.spec.sampling.logprobs ?? 0);
      row.promptLogprobs.push({ token: this.codec.piece(ids[next]), logprob: lp.logprob, top: lp.top.map(([id, v]) => [this.codec.piece(id), v]) });
    }
  }

  /** One decoder run for every running row. */
  private async decodeStep(): Promise<void> {
    const rows = this.running;
    const B = rows.length;
    const inputIds = new BigInt64Array(B);
    const positionIds = new BigInt64Array(B);
    rows.forEach((r, i) => {
      inputIds[i] = BigInt(r.lastToken);
      positionIds[i] = BigInt(r.length);
    });
    const t = this.now();
    const logits = await this.runtime.step({
      firstSlot: 0, rows: B, seq: 1, inputIds, positionIds, pastLength: rows.map((r) => r.length), newTokens: rows.map(() => 1),
      clusterIndex: BigInt64Array.from(rows, (r) => this.stackIndex(r)), rowScale: Float32Array.from(rows, (r) => r.spec.adaptationScale),
      logitsIndex: rows.map((_, i) => i),
    });
    const ms = this.now() - t;
    this.onForward('decode', ms, B, B);

    const events = new Map<ActiveBatch, RowEvent[]>();
    const advancing: Array<{ row: Row; at: number }> = [];
    rows.forEach((r, i) => {
      r.length++;
      const out = events.get(r.batch) ?? [];
      events.set(r.batch, out);
      if (r.batch.hooks.isCancelled(r.row)) this.finish(r, 'cancelled', out);
      else advancing.push({ row: r, at: i });
    });
    await this.advanceAll(advancing, logits, events);
    for (const batch of new Set(rows.map((r) => r.batch))) {
      batch.stats.decodeSteps++;
      batch.stats.decodeMs += ms;
    }
    for (const [batch, list] of events) batch.hooks.onEvents(list);

    const done = rows.filter((r) => r.done);
    // Highest slots first: each leaving row's slot goes to the last running row, which is then never a leaver.
    for (const row of done.sort((a, b) => b.cacheSlot - a.cacheSlot)) {
      const last = this.running.pop()!;
      if (last !== row) {
        const slot = row.cacheSlot;
        this.moveRow(last, slot);
        this.running[slot] = last;
      }
    }
    this.retire(done);
  }

  /** Counts finished rows against their batches; batches with no live row resolve and give their adapter entries back. */
  private retire(rows: readonly Row[]): void {
    if (rows.length === 0) return;
    for (const r of rows) r.batch.live--;
    const finished = this.batches.filter((batch) => batch.live === 0);
    if (finished.length === 0) return;
    this.batches = this.batches.filter((batch) => batch.live > 0);
    for (const batch of finished) {
      if (batch.parts.length > 0) this.runtime.releaseAdapters(batch.base);
      batch.resolve(batch.stats);
    }
  }

  private failAll(error: Error): void {
    const batches = this.batches;
    this.batches = [];
    this.running = [];
    this.prefilling = [];
    this.waiting = [];
    this.prefillStart = 0;
    for (const batch of batches) {
      if (batch.parts.length > 0) this.runtime.releaseAdapters(batch.base);
      batch.reject(error);
    }
  }

  private finish(r: Row, reason: FinishReason, out: RowEvent[]): void {
    r.done = true;
    out.push({ row: r.row, text: reason === 'cancelled' ? '' : r.text.flush(), finish: reason, completionTokens: r.generated });
  }

  /**
   * Each row's next token from its logits row `at` (greedy rows by argmax; sampling rows from probabilities that one
   * softmax run computes for all of them), turned into events.
   */
  private async advanceAll(rows: ReadonlyArray<{ row: Row; at: number }>, logits: Float32Array, events: Map<ActiveBatch, RowEvent[]>): Promise<void> {
    const V = this.runtime.vocabSize;
    this.banEarlyEnds(rows, logits);
    this.penalize(rows, logits);
    const sampling = rows.filter(({ row }) => !isGreedy(row.spec.sampling.temperature));
    const probs = sampling.length === 0 ? null : await this.runtime.softmax(logits, sampling.map((s) => s.at), sampling.map((s) => s.row.spec.sampling.temperature));
    const probRow = new Map(sampling.map((s, j) => [s.row, j]));
    for (const { row, at } of rows) {
      const j = probRow.get(row);
      const token = j === undefined ? argmax(logits, at * V, V) : sampleFromProbs(probs!, j * V, row.spec.sampling, row.rng, this.scratch);
      this.advance(row, token, logits, at * V, events.get(row.batch)!);
    }
  }

  /**
   * A row short of its min_tokens may not end yet: its end-of-text and stop ids are taken out of its logits before
   * its token is chosen (so its logprobs are those of the distribution it samples from).
   */
  private banEarlyEnds(rows: ReadonlyArray<{ row: Row; at: number }>, logits: Float32Array): void {
    const V = this.runtime.vocabSize;
    for (const { row, at } of rows) {
      const { minTokens, ignoreEos, stopTokenIds } = row.spec.sampling;
      if (row.generated >= minTokens) continue;
      for (const id of ignoreEos ? stopTokenIds : [...this.codec.eosIds, ...stopTokenIds]) logits[at * V + id] = Number.NEGATIVE_INFINITY;
    }
  }

  /**
   * logit_bias and the penalties of the rows that have them, after the min_tokens ban and before temperature and the
   * cuts, as vLLM v1 orders them (penalties.ts). Like the ban, they change the logits in place, so a row's logprobs
   * are those of the logits its token is chosen from.
   */
  private penalize(rows: ReadonlyArray<{ row: Row; at: number }>, logits: Float32Array): void {
    const V = this.runtime.vocabSize;
    for (const { row, at } of rows) row.penalties?.apply(logits, at * V);
  }

  /** Turns the row's chosen token into an event (or its end). */
  private advance(r: Row, token: number, logits: Float32Array, offset: number, out: RowEvent[]): void {
    const V = this.runtime.vocabSize;
    if ((this.codec.isEos(token) && !r.spec.sampling.ignoreEos) || r.spec.sampling.stopTokenIds.includes(token)) {
      this.finish(r, 'stop', out);
      return;
    }
    r.generated++;
    r.penalties?.record(token);
    r.batch.stats.tokens++;
    r.lastToken = token;
    const event: RowEvent = { row: r.row, token, text: '', completionTokens: r.generated };
    if (r.spec.sampling.logprobs !== null) {
      const lp = tokenLogprobs(logits, offset, V, token, r.spec.sampling.logprobs);
      event.logprob = { token: this.codec.piece(token), logprob: lp.logprob, top: lp.top.map(([id, v]) => [this.codec.piece(id), v]) };
    }
    const pushed = r.text.push(token);
    event.text = pushed.delta;
    if (pushed.stopped) {
      r.done = true;
      event.finish = 'stop';
    } else if (r.generated >= r.spec.sampling.maxTokens) {
      r.done = true;
      event.text += r.text.flush();
      event.finish = 'length';
    }
    out.push(event);
  }
}
