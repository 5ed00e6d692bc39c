/**
 * Builds OpenAI-shaped completion objects from a request's pipeline events: the whole response (JSON), or
 * one chunk at a time (SSE).
 */
import type { BatchInfo, Completion } from '../../batching/completion.js';
import type { FinishReason, TokenLogprob } from '../../engine/protocol.js';
import { pieceBytes } from '../../model/tokenizer.js';
import type { ChameleonInfo, CompletionChoice, CompletionResponse, Logprobs, Usage } from '../schemas/completions.js';

export function chameleonInfo(batch: BatchInfo): ChameleonInfo {
  const similarities = batch.gates.map((g) => g?.similarity ?? null);
  const gated = batch.gates.map((g) => g?.gated ?? false);
  const weights = batch.gates.map((g) => g?.weight ?? null);
  return {
    batch_id: batch.batchId,
    batch_size: batch.batchSize,
    cluster_index: batch.clusterIndices[0] ?? 0,
    cluster_indices: batch.clusterIndices,
    cluster_size: batch.clusterSizes[0] ?? 0,
    cluster_sizes: batch.clusterSizes,
    context_similarity: similarities[0] ?? null,
    context_similarities: similarities,
    gated: gated[0] ?? false,
    gated_choices: gated,
    dynamic_weight: weights[0] ?? null,
    dynamic_weights: weights,
    num_clusters: batch.clusters,
    mode: batch.mode,
    adapter: batch.adapter,
    adaptation_scale: batch.adaptationScale,
  };
}

export function publicFinish(reason: FinishReason): 'stop' | 'length' | null {
  return reason === 'cancelled' ? null : reason;
}

/**
 * Where each token starts in the text, in characters (code points, as OpenAI counts them). A token that ends
 * inside a character (`bytes:\xe6\x97`) and the tokens that complete that character all start where it starts.
 */
export class TextOffsets {
  private chars: number;
  /** Continuation bytes the character in progress still needs. */
  private pending = 0;

  /**
   * `leadingSpace`: the first token's text starts with a space the text does not have (a SentencePiece tokenizer
   * writes its `▁` before the first word), which takes no character.
   */
  constructor(start = 0, private leadingSpace = false) {
    this.chars = start;
  }

  /** The offsets of an echoed prompt's tokens (`entries`, the prompt's logprobs in order). */
  static forEcho(prompt: string, entries: readonly TokenLogprob[]): TextOffsets {
    return new TextOffsets(0, (entries[0]?.token.startsWith(' ') ?? false) && !prompt.startsWith(' '));
  }

  /** The offset of `token` (a logprobs token text), then advances past it. */
  next(token: string): number {
    const at = this.chars;
    const bytes = pieceBytes(token);
    const skip = this.leadingSpace && bytes[0] === 0x20 ? 1 : 0;
    this.leadingSpace = false;
    for (const byte of bytes.subarray(skip)) this.push(byte);
    return at;
  }

  private push(byte: number): void {
    if ((byte & 0xc0) === 0x80) {
      if (this.pending > 0 && --this.pending > 0) return;
      this.chars++; // the character is complete, or a stray continuation byte became U+FFFD
      return;
    }
    if (this.pending > 0) {
      this.pending = 0;
      this.chars++; // a truncated character became U+FFFD
    }
    const length = byte < 0x80 ? 1 : byte >= 0xc0 && byte < 0xe0 ? 2 : byte >= 0xe0 && byte < 0xf0 ? 3 : byte >= 0xf0 && byte < 0xf8 ? 4 : 1;
    if (length === 1) this.chars++;
    else this.pending = length - 1;
  }
}

/** Characters of `text` as OpenAI's offsets count them (code points). */
export function charLength(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/** Logprobs of consecutive tokens, their offsets taken from `offsets`. */
export function logprobsOf(entries: readonly TokenLogprob[], offsets: TextOffsets): Logprobs {
  const out: Logprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  for (const e of entries) {
    out.tokens.push(e.token);
    out.token_logprobs.push(e.logprob);
    out.top_logprobs.push(e.top === null ? null : topOf(e.top));
    out.text_offset.push(offsets.next(e.token));
  }
  return out;
}

/** Alternatives, most likely first; should two ever share a text, the more likely one keeps it. */
function topOf(top: ReadonlyArray<readonly [string, number]>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [token, logprob] of top) if (!Object.hasOwn(out, token)) out[token] = logprob;
  return out;
}

/** The generated text of one choice of a non-streamed response, its tokens' logprobs and its finish. */
export class GeneratedText {
  protected text = '';
  protected readonly entries: TokenLogprob[] = [];
  protected finish: 'stop' | 'length' | null = null;
  tokens = 0;

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
}

/** Accumulates one choice of a non-streamed completion. */
export class ChoiceBuilder extends GeneratedText {
  constructor(readonly index: number, private readonly prompt: string, private readonly echo: boolean, private readonly wantLogprobs: boolean) {
    super();
    if (echo) this.text = prompt;
  }

  build(): CompletionChoice {
    return {
      text: this.text,
      index: this.index,
      logprobs: this.wantLogprobs ? logprobsOf(this.entries, this.echo ? TextOffsets.forEcho(this.prompt, this.entries) : new TextOffsets(charLength(this.prompt))) : null,
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
