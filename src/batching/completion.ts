/**
 * One admitted completion request on its way through the pipeline, and the per-request channel its results
 * come back on: the caller iterates `events()` and sees exactly its own batch assignment, tokens and finish.
 */
import type { AdaptationMode } from '../adaptation/slots.js';
import type { ServiceError } from '../errors.js';
import type { FinishReason, LoraFactors, TokenLogprob } from '../engine/protocol.js';
import type { Queued } from './queue.js';

export interface GenerationParams {
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  /** null = a random seed per prompt. */
  seed: number | null;
  stop: string[];
  logprobs: number | null;
  echo: boolean;
  ignoreEos: boolean;
  mode: AdaptationMode;
  /** The named adapter the request's `model` chose (mode `adapter`), resolved at admission. */
  adapter?: { id: string; factors: LoraFactors };
  /** Strength of the low-rank update for this request's rows (adaptation_scale). */
  adaptationScale: number;
}

export interface PromptInput {
  text: string;
  /** Token ids fed to the model (BOS included when the package adds one). */
  ids: number[];
  /** Tokens of the text itself (ids without the added BOS). */
  textTokens: number;
}

export interface BatchInfo {
  batchId: number;
  /** Prompts this request was clustered with (clustered modes: the window's and the in-flight prompts of its mode), else the window's prompts. */
  batchSize: number;
  /** Clusters among them (0 when the mode clusters nothing). */
  clusters: number;
  /** Cluster of each prompt (choice) of this request. */
  clusterIndices: number[];
  /** Members of the cluster whose mean formed each prompt's context (1 for request mode, 0 for none / static / adapter). */
  clusterSizes: number[];
  /** Each prompt's hypernetwork context's similarity to the nearest training domain (null without a context or a gate). */
  contextSimilarities: Array<number | null>;
  /** Each prompt: the gate turned its context away and the static LoRA served it. */
  gated: boolean[];
  /** Each prompt: the weight of its generated update (0 when gated; null without a hypernetwork context). */
  dynamicWeights: Array<number | null>;
  mode: AdaptationMode;
  /** The named adapter (mode `adapter`), else null. */
  adapter: string | null;
  adaptationScale: number;
}

export type CompletionEvent =
  | { type: 'batched'; batch: BatchInfo }
  | { type: 'prompt'; choice: number; logprobs: TokenLogprob[] }
  | { type: 'text'; choice: number; text: string; logprob?: TokenLogprob }
  | { type: 'finish'; choice: number; reason: FinishReason; completionTokens: number }
  | { type: 'done' }
  | { type: 'error'; error: ServiceError };

export class Completion implements Queued {
  readonly rows: number;
  readonly arrivedAt: number;
  private readonly buffer: CompletionEvent[] = [];
  private wake: (() => void) | null = null;
  private ended = false;
  private cancelHandler: (() => void) | null = null;
  cancelled = false;

  constructor(
    readonly requestId: string,
    readonly prompts: PromptInput[],
    readonly params: GenerationParams,
    now: number = performance.now(),
  ) {
    this.rows = prompts.length;
    this.arrivedAt = now;
  }

  /** Pipeline side: delivers an event to this request's caller. */
  emit(event: CompletionEvent): void {
    if (this.ended) return;
    if (event.type === 'done' || event.type === 'error') this.ended = true;
    this.buffer.push(event);
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  get finished(): boolean {
    return this.ended;
  }

  /** Pipeline side: what to do when the caller gives up (set by the scheduler). */
  onCancel(handler: () => void): void {
    this.cancelHandler = handler;
  }

  /** Caller side: stop working on this request (client went away). */
  cancel(): void {
    if (this.cancelled || this.ended) return;
    this.cancelled = true;
    this.cancelHandler?.();
  }

  /** Caller side: the events, in order, ending with `done` or `error`. */
  async *events(): AsyncGenerator<CompletionEvent> {
    for (;;) {
      while (this.buffer.length > 0) {
        const event = this.buffer.shift()!;
        yield event;
        if (event.type === 'done' || event.type === 'error') return;
      }
      await new Promise<void>((resolve) => { this.wake = resolve; });
    }
  }
}
