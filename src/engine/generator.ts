/**
 * One batch, start to end, inside the worker: adapters (one hypernetwork run), a prefill over the left-padded
 * prompts, then decode steps with the KV cache until every row has stopped. One decoder run serves every row,
 * each with its own adapter slot (cluster_index). Rows that finish leave the batch (their KV rows are dropped).
 *
 * The ONNX Runtime details sit behind `Runtime` (runtime.ts), so this file is plain TypeScript.
 */
import type { BatchStats, FinishReason, RowEvent, RowSpec, TokenLogprob } from './protocol.js';
import { Random, SamplingScratch, sampleToken, tokenLogprobs } from './sampling.js';
import { TextTracker } from './stopping.js';

/** Opaque to this file: the runtime's KV cache and adapter stack. */
export interface KvCache {
  readonly batch: number;
  readonly length: number;
}
export interface AdapterStack {
  readonly slots: number;
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
  /** Stacks [zero, static, hypernet(contexts)...] along the clusters axis (one hypernetwork run when count > 0). */
  adapters(contexts: Float32Array, count: number): Promise<AdapterStack>;
  step(feeds: StepFeeds, adapters: AdapterStack): Promise<StepResult>;
  /** The cache restricted to the given batch rows, in that order. */
  selectRows(kv: KvCache, rows: number[]): KvCache;
}

export interface TextCodec {
  readonly eosId: number;
  decode(ids: readonly number[]): string;
  piece(id: number): string;
}

export interface GenerateHooks {
  onAdapted(hypernetMs: number): void;
  onPrompt(row: number, logprobs: TokenLogprob[]): void;
  onStep(phase: 'prefill' | 'decode', forwardMs: number, batch: number, events: RowEvent[]): void;
  isCancelled(row: number): boolean;
}

interface RowState {
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

export async function generateBatch(
  runtime: Runtime,
  codec: TextCodec,
  batchId: number,
  rows: RowSpec[],
  contexts: Float32Array,
  contextCount: number,
  hooks: GenerateHooks,
  now: () => number = performance.now.bind(performance),
): Promise<BatchStats> {
  const V = runtime.vocabSize;
  const scratch = new SamplingScratch(V);
  const stats: BatchStats = { batchId, rows: rows.length, hypernetMs: 0, prefillMs: 0, decodeSteps: 0, decodeMs: 0, tokens: 0 };

  let t = now();
  const adapters = await runtime.adapters(contexts, contextCount);
  stats.hypernetMs = now() - t;
  hooks.onAdapted(stats.hypernetMs);

  const T = Math.max(...rows.map((r) => r.promptIds.length));
  let states: RowState[] = rows.map((spec, row) => ({
    row,
    spec,
    pad: T - spec.promptIds.length,
    length: spec.promptIds.length,
    lastToken: spec.promptIds[spec.promptIds.length - 1],
    generated: 0,
    rng: new Random(spec.seed),
    text: new TextTracker((ids) => codec.decode(ids), spec.stop),
    done: false,
  }));

  // Prefill: every prompt, left-padded to T.
  const B = states.length;
  const inputIds = new BigInt64Array(B * T);
  const positionIds = new BigInt64Array(B * T);
  const attentionMask = new BigInt64Array(B * T);
  for (const s of states) {
    const base = s.row * T;
    s.spec.promptIds.forEach((id, j) => {
      inputIds[base + s.pad + j] = BigInt(id);
      positionIds[base + s.pad + j] = BigInt(j);
      attentionMask[base + s.pad + j] = 1n;
    });
    for (let j = 0; j < s.pad; j++) inputIds[base + j] = PAD_ID;
  }
  const clusterIndex = (list: RowState[]) => BigInt64Array.from(list, (s) => BigInt(s.spec.slot));
  t = now();
  let result = await runtime.step({ batch: B, seq: T, inputIds, positionIds, attentionMask, clusterIndex: clusterIndex(states), past: null }, adapters);
  stats.prefillMs = now() - t;

  for (const s of states) if (s.spec.promptLogprobs) hooks.onPrompt(s.row, promptLogprobs(s, result.logits, T, V, codec));

  const events: RowEvent[] = [];
  for (const s of states) {
    if (hooks.isCancelled(s.row)) finish(s, 'cancelled', events);
    else if (s.spec.maxTokens === 0) finish(s, 'length', events);
    else advance(s, result.logits, (s.row * T + T - 1) * V, V, scratch, codec, events);
  }
  hooks.onStep('prefill', stats.prefillMs, B, events);
  let kv = result.kv;

  // Decode: one token per live row per run.
  for (;;) {
    const live = states.filter((s) => !s.done);
    if (live.length === 0) break;
    if (live.length < states.length) {
      kv = runtime.selectRows(kv, live.map((s) => states.indexOf(s)));
      states = live;
    }
    const b = states.length;
    const total = kv.length + 1;
    const ids = new BigInt64Array(b);
    const pos = new BigInt64Array(b);
    const mask = new BigInt64Array(b * total);
    states.forEach((s, i) => {
      ids[i] = BigInt(s.lastToken);
      pos[i] = BigInt(s.length);
      mask.fill(1n, i * total + s.pad, (i + 1) * total);
    });
    t = now();
    result = await runtime.step({ batch: b, seq: 1, inputIds: ids, positionIds: pos, attentionMask: mask, clusterIndex: clusterIndex(states), past: kv }, adapters);
    const ms = now() - t;
    stats.decodeMs += ms;
    stats.decodeSteps++;
    kv = result.kv;
    const stepEvents: RowEvent[] = [];
    states.forEach((s, i) => {
      s.length++;
      if (hooks.isCancelled(s.row)) finish(s, 'cancelled', stepEvents);
      else advance(s, result.logits, i * V, V, scratch, codec, stepEvents);
    });
    hooks.onStep('decode', ms, b, stepEvents);
  }
  return stats;

  function finish(s: RowState, reason: FinishReason, out: RowEvent[]): void {
    s.done = true;
    out.push({ row: s.row, text: reason === 'cancelled' ? '' : s.text.flush(), finish: reason, completionTokens: s.generated });
  }

  /** Chooses the row's next token from its logits and turns it into an event. */
  function advance(s: RowState, logits: Float32Array, offset: number, size: number, scr: SamplingScratch, cdc: TextCodec, out: RowEvent[]): void {
    const token = sampleToken(logits, offset, s.spec, s.rng, scr);
    if (token === cdc.eosId && !s.spec.ignoreEos) {
      finish(s, 'stop', out);
      return;
    }
    s.generated++;
    stats.tokens++;
    s.lastToken = token;
    const event: RowEvent = { row: s.row, token, text: '', completionTokens: s.generated };
    if (s.spec.logprobs !== null) {
      const lp = tokenLogprobs(logits, offset, size, token, s.spec.logprobs);
      event.logprob = { token: cdc.piece(token), logprob: lp.logprob, top: lp.top.map(([id, v]) => [cdc.piece(id), v]) };
    }
    const pushed = s.text.push(token);
    event.text = pushed.delta;
    if (pushed.stopped) {
      s.done = true;
      event.finish = 'stop';
    } else if (s.generated >= s.spec.maxTokens) {
      s.done = true;
      event.text += s.text.flush();
      event.finish = 'length';
    }
    out.push(event);
  }
}

/** Logprobs of a row's prompt tokens from the prefill logits (the added BOS is skipped; it has no text). */
function promptLogprobs(s: RowState, logits: Float32Array, T: number, V: number, codec: TextCodec): TokenLogprob[] {
  const n = s.spec.logprobs ?? 0;
  const out: TokenLogprob[] = [];
  const ids = s.spec.promptIds;
  for (let j = s.spec.bosAdded ? 1 : 0; j < ids.length; j++) {
    if (j === 0) {
      out.push({ token: codec.piece(ids[j]), logprob: null, top: null });
      continue;
    }
    const offset = (s.row * T + s.pad + j - 1) * V;
    const lp = tokenLogprobs(logits, offset, V, ids[j], n);
    out.push({ token: codec.piece(ids[j]), logprob: lp.logprob, top: lp.top.map(([id, v]) => [codec.piece(id), v]) });
  }
  return out;
}
