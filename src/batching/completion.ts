/**
 * The one record of an admitted completion request on its way through the pipeline (vLLM's Request): its prompts,
 * its parameters, its status, where it was placed, and the per-request channel its results come back on: the caller
 * iterates `events()` and sees exactly its own batch assignment, tokens and finish.
 */
import { randomInt } from 'node:crypto';
import type { AdaptationMode, AdapterRef } from '../adaptation/modes.js';
import type { PlanRow, RowPlan } from '../adaptation/planner.js';
import type { GateOutcome } from '../adaptation/gate.js';
import type { ServiceError } from '../errors.js';
import type { FinishReason, RowSpec, SamplingParams, TokenLogprob } from '../engine/protocol.js';
import type { Queued } from './queue.js';

/** A request's sampling parameters: those of each of its rows, but for the seed (null = a random seed per prompt). */
export type RequestSampling = Omit<SamplingParams, 'seed'> & { seed: number | null };

export interface GenerationParams {
  sampling: RequestSampling;
  /** Choices per prompt, each its own row (OpenAI's n). */
  n: number;
  echo: boolean;
  mode: AdaptationMode;
  /** The named adapter the request's `model` chose (mode `adapter`), resolved at admission. */
  adapter?: AdapterRef;
  /** Strength of the low-rank update for this request's rows (adaptation_scale). */
  adaptationScale: number;
}

/** waiting: in the queue; running: its rows are in a batch; finished: its last event (done or error) is out. */
export type RequestStatus = 'waiting' | 'running' | 'finished';

export interface PromptInput {
  text: string;
  /** Token ids fed to the model (BOS included when the package adds one). */
  ids: number[];
  /** Tokens of the text itself (ids without the added BOS). */
  textTokens: number;
  /**
   * What adaptation reads of it when that is not the prompt itself: a chat's message contents without its template
   * (the ids its feature is the mean of, and how many prompt tokens they count for).
   */
  adaptation?: { ids: number[]; tokens: number };
}

export interface BatchInfo {
  batchId: number;
  /** Prompts this request was clustered with (clustered modes: the window's and the in-flight prompts of its mode), else the window's prompts. */
  batchSize: number;
  /** Clusters among them (0 when the mode clusters nothing). */
  clusters: number;
  /** Cluster of each choice of this request (the choices of one prompt share their prompt's). */
  clusterIndices: number[];
  /** Members of the cluster whose mean formed each choice's context (1 for request mode, 0 for none / static / adapter). */
  clusterSizes: number[];
  /** What the gate made of each choice's hypernetwork context (null: it has none). */
  gates: Array<GateOutcome | null>;
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

/** What the request's rows were told in one batch, from the plan of their rows. */
export function batchInfoOf(batchId: number, params: GenerationParams, rows: readonly RowPlan[]): BatchInfo {
  return {
    batchId,
    batchSize: rows[0].clusteredWith,
    clusters: rows[0].clusters,
    clusterIndices: rows.map((r) => Math.max(r.cluster, 0)),
    clusterSizes: rows.map((r) => r.clusterSize),
    gates: rows.map((r) => r.gate),
    mode: params.mode,
    adapter: params.adapter?.id ?? null,
    adaptationScale: params.adaptationScale,
  };
}

/**
 * Choice `c` of a request is sample `c % n` of prompt `floor(c / n)`, OpenAI's order. Each choice is a row of its own;
 * the prompt is planned (clustered, adapted) once for all its choices.
 */
export class Completion implements Queued {
  /** Its choices: prompts times n. */
  readonly rows: number;
  readonly arrivedAt: number;
  status: RequestStatus = 'waiting';
  /** The batch its rows run in, and their rows there (once running). */
  placement: { batchId: number; rows: number[] } | null = null;
  private readonly buffer: CompletionEvent[] = [];
  private wake: (() => void) | null = null;
  private cancelHandler: (() => void) | null = null;
  private endHandlers: Array<() => void> = [];
  cancelled = false;

  constructor(
    readonly requestId: string,
    readonly prompts: PromptInput[],
    readonly params: GenerationParams,
    now: number = performance.now(),
  ) {
    this.rows = prompts.length * params.n;
    this.arrivedAt = now;
  }

  /** The prompt (index into `prompts`) a choice samples from. */
  promptOf(choice: number): number {
    return Math.floor(choice / this.params.n);
  }

  /** The prompt's text of each choice, in choice order. */
  choiceTexts(): string[] {
    return Array.from({ length: this.rows }, (_, choice) => this.prompts[this.promptOf(choice)].text);
  }

  /** The planner's view of one of its prompts. */
  planRow(promptIndex: number): PlanRow {
    const prompt = this.prompts[promptIndex];
    const { ids, tokens } = prompt.adaptation ?? { ids: prompt.ids, tokens: prompt.textTokens };
    return { mode: this.params.mode, promptIds: ids, textTokens: tokens, adapter: this.params.adapter };
  }

  /**
   * The engine's view of one of its rows. A seeded request's choice `j` of a prompt draws with seed + j (as vLLM
   * does), so that each choice is the one a request with that seed and n = 1 gets.
   */
  rowSpec(choice: number, adapterIndex: number): RowSpec {
    const prompt = this.prompts[this.promptOf(choice)];
    const { sampling, echo, adaptationScale, n } = this.params;
    return {
      promptIds: prompt.ids,
      bosAdded: prompt.ids.length > prompt.textTokens,
      adapterIndex,
      adaptationScale,
      promptLogprobs: echo && sampling.logprobs !== null,
      sampling: { ...sampling, seed: sampling.seed === null ? randomInt(0, 2 ** 32) : sampling.seed + (choice % n) },
    };
  }

  /** Pipeline side: delivers an event to this request's caller. */
  emit(event: CompletionEvent): void {
    if (this.finished) return;
    if (event.type === 'batched') this.status = 'running';
    if (event.type === 'done' || event.type === 'error') this.status = 'finished';
    this.buffer.push(event);
    const wake = this.wake;
    this.wake = null;
    wake?.();
    if (this.finished) for (const handler of this.endHandlers.splice(0)) handler();
  }

  get finished(): boolean {
    return this.status === 'finished';
  }

  /** Pipeline side: what to do once its last event is out (set by the scheduler). */
  onEnd(handler: () => void): void {
    this.endHandlers.push(handler);
  }

  /** Pipeline side: what to do when the caller gives up (set by the scheduler). */
  onCancel(handler: () => void): void {
    this.cancelHandler = handler;
  }

  /** Caller side: stop working on this request (client went away). */
  cancel(): void {
    if (this.cancelled || this.finished) return;
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
