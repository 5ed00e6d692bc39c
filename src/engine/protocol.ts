/**
 * What the main thread (EngineClient) and the inference worker share: the settings an engine starts with, the adapter
 * stack's layout, and the messages between them. Messages are plain data only (structured clone); Float32Array
 * payloads are transferred, not copied.
 */
import type { Device, EnginePriority } from '../config.js';

export type FinishReason = 'stop' | 'length' | 'cancelled';

/** LoRA factors of the LM head: a [rank, d_model] and b [vocab, rank], row-major. */
export interface LoraFactors {
  rank: number;
  a: Float32Array;
  b: Float32Array;
}

/**
 * The decoder's adapter stack, along its clusters axis (the decoder's cluster_index picks a row's entry):
 *
 *   [ zero adapter | static LoRA | batch 1's adapters | batch 2's adapters | ... ]
 *
 * A row names its adapter by `RowSpec.adapterIndex`: one of the two shared entries, or FIRST_BATCH_ADAPTER + i for
 * its batch's adapter i (its hypernetwork outputs, then its ready-made factors); the engine maps that onto where the
 * batch's adapters sit in the stack. (A row's KV-cache slot is another thing, chosen by the engine alone.)
 */
export const ZERO_ADAPTER = 0;
export const STATIC_ADAPTER = 1;
export const FIRST_BATCH_ADAPTER = 2;

/** How one row's tokens are chosen and reported. */
export interface SamplingParams {
  maxTokens: number;
  /** Below 1e-5: greedy. */
  temperature: number;
  topP: number;
  /** 0 = no top-k cut. */
  topK: number;
  seed: number;
  stop: string[];
  /** Alternatives per generated token to report; null = no logprobs. */
  logprobs: number | null;
  /** Keep generating after the end-of-text token (benchmarks). */
  ignoreEos: boolean;
  /** Tokens generated before an end-of-text or stop token may be (min_tokens). */
  minTokens: number;
  /** Ids that end the row as end of text does, and are not part of its text (stop_token_ids). */
  stopTokenIds: number[];
  /** logit_bias and the presence, frequency and repetition penalties; absent when the request sets none, so its rows pay nothing for them. */
  penalties?: Penalties;
}

/** OpenAI's and vLLM's adjustments of a row's logits before its token is chosen (penalties.ts applies them). */
export interface Penalties {
  /** logit_bias as [token id, bias] pairs (ids checked against the vocabulary at admission). */
  logitBias: Array<[number, number]>;
  /** Subtracted once from the logit of every token the row has generated (0 = none). */
  presencePenalty: number;
  /** Subtracted from a token's logit once per time the row has generated it (0 = none). */
  frequencyPenalty: number;
  /** Divides the positive logits, and multiplies the others, of every token in the prompt or generated (1 = none). */
  repetitionPenalty: number;
}

/** One row (prompt) of a batch, as the worker needs it. */
export interface RowSpec {
  /** Token ids fed to the model, BOS included when the package adds one. */
  promptIds: number[];
  /** True when promptIds[0] is a BOS the service added: it is not part of the text nor of the logprobs. */
  bosAdded: boolean;
  /** This row's adapter: ZERO_ADAPTER, STATIC_ADAPTER, or FIRST_BATCH_ADAPTER + i for its batch's adapter i. */
  adapterIndex: number;
  /** Strength of this row's low-rank update (adaptation_scale: 0 = the base model, 1 = as trained). */
  adaptationScale: number;
  sampling: SamplingParams;
  /** Report the prompt tokens' logprobs too (echo with logprobs). */
  promptLogprobs: boolean;
}

/**
 * How an engine is set up: what the client is started with and sends in the init message, and what the worker reads
 * (the thread priority), the runtime (sessions and cache) and the decode loop (prefill chunks), each only its fields.
 */
export interface EngineSettings {
  /** The model package folder. */
  modelDir: string;
  device: Device;
  /** ONNX Runtime intra-op threads (0 = its default). */
  threads: number;
  /** ONNX Runtime threads spin while idle; they then compete with the event loop for the CPU. */
  spinning: boolean;
  /** KV-cache slots: the most rows in flight (MAX_BATCH_SIZE). */
  slots: number;
  /** Positions per KV-cache slot (MAX_MODEL_LEN); 0 = its default (resolveMaxModelLen in kv-memory.ts). */
  maxModelLen: number;
  /** Most new tokens (rows x padded width) in one prefill run (PREFILL_CHUNK_TOKENS). */
  prefillChunkTokens: number;
  /** Priority of the inference thread and its ONNX Runtime threads under the event loop (ENGINE_NICE): 'idle' (SCHED_IDLE) or a nice value; 0 = the event loop's. */
  priority: EnginePriority;
  /** The event loop's claim on the cores (core-claim.ts), waited out between decoder runs; null: never claimed. */
  coreClaim: SharedArrayBuffer | null;
}

/** The settings a caller may leave out (tools and tests that start an engine without a service). */
type Defaulted = 'spinning' | 'maxModelLen' | 'priority' | 'coreClaim';
export type EngineSettingsInput = Omit<EngineSettings, Defaulted> & Partial<Pick<EngineSettings, Defaulted>>;

/** The settings with the defaults of those left out: threads sleep while idle, the default MAX_MODEL_LEN, the event loop's priority, no claims. */
export function engineSettings(given: EngineSettingsInput): EngineSettings {
  return { ...given, spinning: given.spinning ?? false, maxModelLen: given.maxModelLen ?? 0, priority: given.priority ?? 0, coreClaim: given.coreClaim ?? null };
}

export interface InitMessage {
  type: 'init';
  settings: EngineSettings;
}

/** The two ends of a promise settled later: when a batch's last row finishes, or when an adapter's factors come back. */
export interface Waiter<T> {
  resolve: (value: T) => void;
  reject: (error: Error) => void;
}

/** Called once per decoder run (a prefill chunk, or a decode step over every running row), with the rows and new tokens it served. */
export type ForwardListener = (phase: ForwardMessage['phase'], ms: number, rows: number, tokens: number) => void;

/** One batch as the engine runs it: its rows, the hypernetwork inputs of its clusters, and its ready-made adapters. */
export interface Batch {
  batchId: number;
  rows: RowSpec[];
  /** Hypernetwork inputs, [contextCount, d_model] row-major: adapter FIRST_BATCH_ADAPTER + i is made from context i. */
  contexts: Float32Array;
  contextCount: number;
  /** Weight of each context's generated update, [contextCount] (see adaptation/gate.ts). */
  contextWeights: Float32Array;
  /** Adapters made before the engine (named adapters, library and mask selections): adapter FIRST_BATCH_ADAPTER + contextCount + i is factors[i]. */
  factors: LoraFactors[];
}

export interface GenerateMessage extends Batch {
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

/** The events of one decoder run, per batch (one message per run, not one per batch). */
export interface EventsMessage {
  type: 'events';
  batches: Array<{ batchId: number; events: RowEvent[] }>;
}

/** One decoder run (it may serve rows of several batches). */
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
