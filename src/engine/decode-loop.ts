/**
 * The generation loop inside the worker, with iteration-level (continuous) batching.
 *
 * Each batch (one batcher window) arrives as a job: one hypernetwork run turns its cluster contexts into LoRA
 * factors, and a prefill over its left-padded prompts gives each row its first token. Its rows then join the
 * running set: every decode step is ONE decoder run over all live rows of all windows, each row reading its own
 * adapter slot (cluster_index) in the stacked factors
 *
 *   [ zero | static | window 1's hypernetwork slots | window 2's ... ]
 *
 * Joining pads the shorter KV cache on the left (and masks it); rows that finish leave the cache at once and the
 * common left padding is trimmed. A window whose rows have all finished resolves its job with its stats.
 *
 * The ONNX Runtime details sit behind `Runtime` (runtime.ts), so this file is plain TypeScript.
 */
import type { BatchStats, FinishReason, RowEvent, RowSpec, TokenLogprob } from './protocol.js';
import { Random, SamplingScratch, sampleToken, tokenLogprobs } from './sampling.js';
import { TextTracker } from './stopping.js';

/** Opaque to this file: the runtime's KV cache ([layers, batch, heads, length, head_dim]) and adapter stack. */
export interface KvCache {
  readonly batch: number;
  readonly length: number;
}
export interface AdapterStack {
  readonly slots: number;
}
/** Hypernetwork outputs for `count` contexts. */
export interface AdapterPart {
  readonly count: number;
}

export interface StepFeeds {
  batch: number;
  seq: number;
  inputIds: BigInt64Array;
  positionIds: BigInt64Array;
  attentionMask: BigInt64Array;
  clusterIndex: BigInt64Array;
  past: KvCache | null;
}

export interface StepResult {
  /** [batch, seq, vocab] */
  logits: Float32Array;
  kv: KvCache;
}

export interface Runtime {
  readonly vocabSize: number;
  /** One hypernetwork run: LoRA factors for `count` contexts ([count, d_model] row-major). */
  hypernet(contexts: Float32Array, count: number): Promise<AdapterPart>;
  /** [zero, static, ...parts] stacked along the clusters axis. */
  stack(parts: readonly AdapterPart[]): AdapterStack;
  step(feeds: StepFeeds, adapters: AdapterStack): Promise<StepResult>;
  /** The given batch rows, in that order, without the first `trim` slots of the time axis. */
  selectRows(kv: KvCache, rows: readonly number[], trim: number): KvCache;
  /** Rows of `a` then rows of `b`, the shorter cache left-padded to the longer one's length. */
  concat(a: KvCache, b: KvCache): KvCache;
}

export interface TextCodec {
  readonly eosId: number;
  decode(ids: readonly number[]): string;
  piece(id: number): string;
}

export interface Job {
  batchId: number;
  rows: RowSpec[];
  /** Hypernetwork inputs, [contextCount, d_model]; row slot 2 + i reads context i. */
  contexts: Float32Array;
  contextCount: number;
}

export interface JobHooks {
  onAdapted(hypernetMs: number): void;
  onPrompt(row: number, logprobs: TokenLogprob[]): void;
  /** This job's events of one decoder run (prefill or decode step). */
  onEvents(events: RowEvent[]): void;
  isCancelled(row: number): boolean;
}

/** Called once per decoder run, with the rows it served. */
export type ForwardListener = (phase: 'prefill' | 'decode', ms: number, rows: number) => void;

interface Window {
  job: Job;
  hooks: JobHooks;
  part: AdapterPart | null;
  /** Global slot of this window's first hypernetwork slot in the current stack. */
  base: number;
  live: number;
  stats: BatchStats;
  resolve: (stats: BatchStats) => void;
  reject: (error: Error) => void;
}

interface Row {
  window: Window;
  row: number;
  spec: RowSpec;
  /** Left padding of this row in the current cache. */
  pad: number;
  /** Real tokens in the cache (the next token's position). */
  length: number;
  lastToken: number;
  generated: number;
  rng: Random;
  text: TextTracker;
  done: boolean;
}

const PAD_ID = 0n;

export class DecodeLoop {
  private readonly scratch: SamplingScratch;
  private pending: Array<{ job: Job; hooks: JobHooks; resolve: (s: BatchStats) => void; reject: (e: Error) => void }> = [];
  private rows: Row[] = [];
  private windows: Window[] = [];
  private kv: KvCache | null = null;
  private stack: AdapterStack;
  private running: Promise<void> | null = null;

  constructor(
    private readonly runtime: Runtime,
    private readonly codec: TextCodec,
    private readonly onForward: ForwardListener = () => {},
    private readonly now: () => number = () => performance.now(),
    private readonly yieldToEvents: () => Promise<void> = () => new Promise((resolve) => setImmediate(resolve)),
  ) {
    this.scratch = new SamplingScratch(runtime.vocabSize);
    this.stack = runtime.stack([]);
  }

  /** Resolves when no job is left (pending or running). */
  async drained(): Promise<void> {
    while (this.running !== null) await this.running;
  }

  /** Adds a job; its rows join the running decode at the next step. Resolves when all its rows have finished. */
  submit(job: Job, hooks: JobHooks): Promise<BatchStats> {
    return new Promise((resolve, reject) => {
      this.pending.push({ job, hooks, resolve, reject });
      this.running ??= this.pump().finally(() => {
        this.running = null;
      });
    });
  }

  private async pump(): Promise<void> {
    for (;;) {
      while (this.pending.length > 0) await this.admit(this.pending.shift()!);
      if (this.rows.length === 0) {
        if (this.pending.length === 0) return;
        continue;
      }
      try {
        await this.decodeStep();
      } catch (error) {
        this.failAll(error as Error);
      }
      await this.yieldToEvents();
    }
  }

  /** Adapters and prefill for one job; its live rows then join the running set. */
  private async admit(entry: DecodeLoop['pending'][number]): Promise<void> {
    const { job, hooks } = entry;
    const stats: BatchStats = { batchId: job.batchId, rows: job.rows.length, hypernetMs: 0, prefillMs: 0, decodeSteps: 0, decodeMs: 0, tokens: 0 };
    const window: Window = { job, hooks, part: null, base: 0, live: 0, stats, resolve: entry.resolve, reject: entry.reject };
    try {
      let t = this.now();
      if (job.contextCount > 0) window.part = await this.runtime.hypernet(job.contexts, job.contextCount);
      stats.hypernetMs = this.now() - t;
      hooks.onAdapted(stats.hypernetMs);

      const B = job.rows.length;
      const T = Math.max(...job.rows.map((r) => r.promptIds.length));
      const rows: Row[] = job.rows.map((spec, row) => ({
        window,
        row,
        spec,
        pad: T - spec.promptIds.length,
        length: spec.promptIds.length,
        lastToken: spec.promptIds[spec.promptIds.length - 1],
        generated: 0,
        rng: new Random(spec.seed),
        text: new TextTracker((ids) => this.codec.decode(ids), spec.stop),
        done: false,
      }));
      const inputIds = new BigInt64Array(B * T).fill(PAD_ID);
      const positionIds = new BigInt64Array(B * T);
      const attentionMask = new BigInt64Array(B * T);
      for (const r of rows) {
        const base = r.row * T + r.pad;
        r.spec.promptIds.forEach((id, j) => {
          inputIds[base + j] = BigInt(id);
          positionIds[base + j] = BigInt(j);
          attentionMask[base + j] = 1n;
        });
      }
      const clusterIndex = BigInt64Array.from(rows, (r) => BigInt(r.spec.slot));
      t = this.now();
      const result = await this.runtime.step(
        { batch: B, seq: T, inputIds, positionIds, attentionMask, clusterIndex, past: null },
        this.runtime.stack(window.part ? [window.part] : []),
      );
      stats.prefillMs = this.now() - t;
      this.onForward('prefill', stats.prefillMs, B);

      for (const r of rows) if (r.spec.promptLogprobs) hooks.onPrompt(r.row, this.promptLogprobs(r, result.logits, T));
      const events: RowEvent[] = [];
      for (const r of rows) {
        if (hooks.isCancelled(r.row)) this.finish(r, 'cancelled', events);
        else if (r.spec.maxTokens === 0) this.finish(r, 'length', events);
        else this.advance(r, result.logits, (r.row * T + T - 1) * this.runtime.vocabSize, events);
      }
      hooks.onEvents(events);

      const kept = rows.filter((r) => !r.done);
      window.live = kept.length;
      if (kept.length === 0) {
        entry.resolve(stats);
        return;
      }
      let kv = result.kv;
      const trim = Math.min(...kept.map((r) => r.pad));
      if (kept.length < B || trim > 0) {
        kv = this.runtime.selectRows(kv, kept.map((r) => r.row), trim);
        for (const r of kept) r.pad -= trim;
      }
      if (this.kv === null) {
        this.kv = kv;
      } else {
        const length = Math.max(this.kv.length, kv.length);
        for (const r of this.rows) r.pad += length - this.kv.length;
        for (const r of kept) r.pad += length - kv.length;
        this.kv = this.runtime.concat(this.kv, kv);
      }
      this.rows.push(...kept);
      this.windows.push(window);
      this.restack();
    } catch (error) {
      entry.reject(error as Error);
    }
  }

  /** One decoder run for every live row. */
  private async decodeStep(): Promise<void> {
    const rows = this.rows;
    const kv = this.kv!;
    const b = rows.length;
    const total = kv.length + 1;
    const ids = new BigInt64Array(b);
    const pos = new BigInt64Array(b);
    const mask = new BigInt64Array(b * total);
    const slots = new BigInt64Array(b);
    rows.forEach((r, i) => {
      ids[i] = BigInt(r.lastToken);
      pos[i] = BigInt(r.length);
      mask.fill(1n, i * total + r.pad, (i + 1) * total);
      slots[i] = BigInt(r.spec.slot < 2 ? r.spec.slot : r.window.base + r.spec.slot - 2);
    });
    const t = this.now();
    const result = await this.runtime.step({ batch: b, seq: 1, inputIds: ids, positionIds: pos, attentionMask: mask, clusterIndex: slots, past: kv }, this.stack);
    const ms = this.now() - t;
    this.onForward('decode', ms, b);
    this.kv = result.kv;

    const events = new Map<Window, RowEvent[]>();
    rows.forEach((r, i) => {
      r.length++;
      const out = events.get(r.window) ?? [];
      events.set(r.window, out);
      if (r.window.hooks.isCancelled(r.row)) this.finish(r, 'cancelled', out);
      else this.advance(r, result.logits, i * this.runtime.vocabSize, out);
    });
    for (const w of this.windows) {
      w.stats.decodeSteps++;
      w.stats.decodeMs += ms;
    }
    for (const [w, list] of events) w.hooks.onEvents(list);

    const kept = rows.filter((r) => !r.done);
    if (kept.length === rows.length) return;
    for (const r of rows) if (r.done) r.window.live--;
    if (kept.length === 0) {
      this.kv = null;
    } else {
      const trim = Math.min(...kept.map((r) => r.pad));
      this.kv = this.runtime.selectRows(this.kv, kept.map((r) => rows.indexOf(r)), trim);
      for (const r of kept) r.pad -= trim;
    }
    this.rows = kept;
    const finished = this.windows.filter((w) => w.live === 0);
    if (finished.length > 0) {
      this.windows = this.windows.filter((w) => w.live > 0);
      this.restack();
      for (const w of finished) w.resolve(w.stats);
    }
  }

  /** Rebuilds the adapter stack for the windows with live rows, and their slot offsets. */
  private restack(): void {
    let base = 2;
    const parts: AdapterPart[] = [];
    for (const w of this.windows) {
      w.base = base;
      if (w.part !== null) {
        parts.push(w.part);
        base += w.part.count;
      }
    }
    this.stack = this.runtime.stack(parts);
  }

  private failAll(error: Error): void {
    const windows = this.windows;
    this.windows = [];
    this.rows = [];
    this.kv = null;
    this.stack = this.runtime.stack([]);
    for (const w of windows) w.reject(error);
  }

  private finish(r: Row, reason: FinishReason, out: RowEvent[]): void {
    r.done = true;
    out.push({ row: r.row, text: reason === 'cancelled' ? '' : r.text.flush(), finish: reason, completionTokens: r.generated });
  }

  /** Chooses the row's next token from its logits and turns it into an event. */
  private advance(r: Row, logits: Float32Array, offset: number, out: RowEvent[]): void {
    const V = this.runtime.vocabSize;
    const token = sampleToken(logits, offset, r.spec, r.rng, this.scratch);
    if (token === this.codec.eosId && !r.spec.ignoreEos) {
      this.finish(r, 'stop', out);
      return;
    }
    r.generated++;
    r.window.stats.tokens++;
    r.lastToken = token;
    const event: RowEvent = { row: r.row, token, text: '', completionTokens: r.generated };
    if (r.spec.logprobs !== null) {
      const lp = tokenLogprobs(logits, offset, V, token, r.spec.logprobs);
      event.logprob = { token: this.codec.piece(token), logprob: lp.logprob, top: lp.top.map(([id, v]) => [this.codec.piece(id), v]) };
    }
    const pushed = r.text.push(token);
    event.text = pushed.delta;
    if (pushed.stopped) {
      r.done = true;
      event.finish = 'stop';
    } else if (r.generated >= r.spec.maxTokens) {
      r.done = true;
      event.text += r.text.flush();
      event.finish = 'length';
    }
    out.push(event);
  }

  /** Logprobs of a row's prompt tokens from the prefill logits (the added BOS is skipped; it has no text). */
  private promptLogprobs(r: Row, logits: Float32Array, T: number): TokenLogprob[] {
    const V = this.runtime.vocabSize;
    const n = r.spec.logprobs ?? 0;
    const out: TokenLogprob[] = [];
    const ids = r.spec.promptIds;
    for (let j = r.spec.bosAdded ? 1 : 0; j < ids.length; j++) {
      if (j === 0) {
        out.push({ token: this.codec.piece(ids[j]), logprob: null, top: null });
        continue;
      }
      const offset = (r.row * T + r.pad + j - 1) * V;
      const lp = tokenLogprobs(logits, offset, V, ids[j], n);
      out.push({ token: this.codec.piece(ids[j]), logprob: lp.logprob, top: lp.top.map(([id, v]) => [this.codec.piece(id), v]) });
    }
    return out;
  }
}
