/**
 * Builds OpenAI-shaped completion objects from a request's pipeline events: the whole response (JSON), or
 * one chunk at a time (SSE).
 */
import type { BatchInfo, Completion } from '../../batching/completion.js';
import type { FinishReason, TokenLogprob } from '../../engine/protocol.js';
import type { ChameleonInfo, CompletionChoice, CompletionResponse, Logprobs, Usage } from '../schemas/completions.js';

export function chameleonInfo(batch: BatchInfo): ChameleonInfo {
  return {
    batch_id: batch.batchId,
    batch_size: batch.batchSize,
    cluster_index: batch.clusterIndices[0] ?? 0,
    cluster_indices: batch.clusterIndices,
    cluster_size: batch.clusterSizes[0] ?? 0,
    cluster_sizes: batch.clusterSizes,
    num_clusters: batch.clusters,
    mode: batch.mode,
  };
}

export function publicFinish(reason: FinishReason): 'stop' | 'length' | null {
  return reason === 'cancelled' ? null : reason;
}

/** Logprobs of consecutive tokens, with text offsets that continue from `offset`. */
export function logprobsOf(entries: readonly TokenLogprob[], offset: number): Logprobs {
  const out: Logprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  let at = offset;
  for (const e of entries) {
    out.tokens.push(e.token);
    out.token_logprobs.push(e.logprob);
    out.top_logprobs.push(e.top === null ? null : Object.fromEntries(e.top));
    out.text_offset.push(at);
    at += e.token.length;
  }
  return out;
}

/** Accumulates one choice of a non-streamed response. */
export class ChoiceBuilder {
  private text = '';
  private readonly entries: TokenLogprob[] = [];
  private finish: 'stop' | 'length' | null = null;
  tokens = 0;

  constructor(readonly index: number, private readonly prompt: string, private readonly echo: boolean, private readonly wantLogprobs: boolean) {
    if (echo) this.text = prompt;
  }

  promptLogprobs(entries: readonly TokenLogprob[]): void {
    this.entries.unshift(...entries);
  }

  append(text: string, logprob?: TokenLogprob): void {
    this.text += text;
    if (logprob !== undefined) this.entries.push(logprob);
  }

  finished(reason: FinishReason, tokens: number): void {
    this.finish = publicFinish(reason);
    this.tokens = tokens;
  }

  build(): CompletionChoice {
    return {
      text: this.text,
      index: this.index,
      logprobs: this.wantLogprobs ? logprobsOf(this.entries, this.echo ? 0 : this.prompt.length) : null,
      finish_reason: this.finish,
    };
  }
}

export function usageOf(completion: Completion, completionTokens: number): Usage {
  const prompt = completion.prompts.reduce((sum, p) => sum + p.textTokens, 0);
  return { prompt_tokens: prompt, completion_tokens: completionTokens, total_tokens: prompt + completionTokens };
}

export interface ResponseHead {
  id: string;
  created: number;
  model: string;
}

export function buildResponse(head: ResponseHead, choices: CompletionChoice[], usage: Usage, batch: BatchInfo): CompletionResponse {
  return { id: head.id, object: 'text_completion', created: head.created, model: head.model, choices, usage, chameleon: chameleonInfo(batch) };
}
