/**
 * Messages between the main thread (EngineClient) and the inference worker. Plain data only (structured
 * clone); Float32Array payloads are transferred, not copied.
 */
import type { Device, EnginePriority } from '../config.js';

export type FinishReason = 'stop' | 'length' | 'cancelled';

/** LoRA factors of the LM head: a [rank, d_model] and b [vocab, rank], row-major. */
export interface LoraFactors {
  rank: number;
  a: Float32Array;
  b: Float32Array;
}

/** One row (prompt) of a batch, as the worker needs it. */
export interface RowSpec {
  /** Token ids fed to the model, BOS included when the package adds one. */
  promptIds: number[];
  /** True when promptIds[0] is a BOS the service added: it is not part of the text nor of the logprobs. */
  bosAdded: boolean;
  /** Adapter slot of this row (the decoder's cluster_index): see adaptation/slots.ts. */
  slot: number;
  /** Strength of this row's low-rank update (adaptation_scale: 0 = the base model, 1 = as trained). */
  adaptationScale: number;
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  stop: string[];
  /** Alternatives per generated token to report; null = no logprobs. */
  logprobs: number | null;
  /** Report the prompt tokens' logprobs too (echo with logprobs). */
  promptLogprobs: boolean;
  /** Keep generating after the end-of-text token (benchmarks). */
  ignoreEos: boolean;
}

export interface InitMessage {
  type: 'init';
  modelDir: string;
  device: Device;
  threads: number;
  spinning: boolean;
  /** KV-cache slots: the most rows in flight (MAX_BATCH_SIZE). */
  slots: number;
  /** Positions per KV-cache slot (MAX_MODEL_LEN, resolved against the package's context). */
  maxModelLen: number;
  /** Most new tokens in one prefill run (PREFILL_CHUNK_TOKENS). */
  prefillChunkTokens: number;
  /** Priority of the inference thread under the event loop (ENGINE_NICE): SCHED_IDLE or a nice value. */
  priority: EnginePriority;
}

/** One batch window as the engine runs it: its rows, the hypernetwork inputs of its clusters, and its ready-made adapters. */
export interface Job {
  batchId: number;
  rows: RowSpec[];
  /** Hypernetwork inputs, [contextCount, d_model] row-major; adapter slot 2 + i is context i. */
  contexts: Float32Array;
  contextCount: number;
  /** Weight of each context's generated update, [contextCount] (see adaptation/gate.ts). */
  contextWeights: Float32Array;
  /** Adapters made before the engine (named adapters, library and mask selections): slot 2 + contextCount + i is factors[i]. */
  factors: LoraFactors[];
}

export interface GenerateMessage extends Job {
  type: 'generate';
}

export interface CancelMessage {
  type: 'cancel';
  batchId: number;
  rows: number[];
}

export interface CloseMessage {
  type: 'close';
}

/** Runs the hypernetwork alone (an adapter made from examples); answered by an AdapterMessage with the same id. */
export interface AdaptMessage {
  type: 'adapt';
  id: number;
  /** [count, d_model] row-major */
  contexts: Float32Array;
  count: number;
  /** Weight of each context's generated update, [count]. */
  weights: Float32Array;
}

export type ToWorker = InitMessage | GenerateMessage | CancelMessage | CloseMessage | AdaptMessage;

/** Log-probability of one token, with the top alternatives (token text -> logprob). */
export interface TokenLogprob {
  token: string;
  logprob: number | null;
  top: Array<[string, number]> | null;
}

export interface RowEvent {
  row: number;
  /** The token generated in this step (absent when the row only finishes, e.g. at end of text). */
  token?: number;
  /** Text that became final (may be empty). */
  text: string;
  /** The generated token's logprob (only when the row asked for logprobs). */
  logprob?: TokenLogprob;
  /** Set on the row's last event. */
  finish?: FinishReason;
  /** Tokens generated so far (final count on the finishing event). */
  completionTokens: number;
}

export interface BatchStats {
  batchId: number;
  rows: number;
  hypernetMs: number;
  prefillMs: number;
  decodeSteps: number;
  decodeMs: number;
  tokens: number;
}

export interface ReadyMessage {
  type: 'ready';
  provider: string;
  warmupMs: number;
}

export interface InitErrorMessage {
  type: 'init-error';
  message: string;
  /** 'package' when the model package does not match its manifest. */
  kind: 'package' | 'runtime';
}

export interface PromptMessage {
  type: 'prompt';
  batchId: number;
  row: number;
  logprobs: TokenLogprob[];
}

/** The events of one decoder run, per job (one message per run, not one per job). */
export interface EventsMessage {
  type: 'events';
  batches: Array<{ batchId: number; events: RowEvent[] }>;
}

/** One decoder run (it may serve rows of several jobs). */
export interface ForwardMessage {
  type: 'forward';
  phase: 'prefill' | 'decode';
  forwardMs: number;
  rows: number;
  /** New tokens the run fed (rows in a decode step, prompt tokens in a prefill chunk). */
  tokens: number;
}

export interface AdaptedMessage {
  type: 'adapted';
  batchId: number;
  hypernetMs: number;
  contexts: number;
}

export interface BatchDoneMessage {
  type: 'batch-done';
  batchId: number;
  stats: BatchStats;
}

export interface AdapterMessage {
  type: 'adapter';
  id: number;
  factors: LoraFactors[];
  error?: string;
}

export interface BatchErrorMessage {
  type: 'batch-error';
  batchId: number;
  message: string;
}

export interface LogMessage {
  type: 'log';
  level: 'warn' | 'info' | 'debug' | 'error';
  message: string;
  data?: Record<string, unknown>;
}

export type FromWorker =
  | ReadyMessage
  | InitErrorMessage
  | PromptMessage
  | EventsMessage
  | ForwardMessage
  | AdaptedMessage
  | BatchDoneMessage
  | BatchErrorMessage
  | AdapterMessage
  | LogMessage;
