/**
 * logit_bias and the presence, frequency and repetition penalties of one row, applied to its logits in place before
 * its token is chosen. The order is vLLM v1's: the min_tokens ban (the decode loop's), then logit_bias, then the
 * repetition penalty, then the frequency and presence penalties; temperature, top_k and top_p come after, on the
 * adjusted logits (for sampling rows, Runtime.softmax runs on them).
 *
 * The semantics are vLLM's: presence and frequency count the row's generated tokens only (OpenAI's definition),
 * the repetition penalty (Hugging Face's) the prompt's and the generated ones. Only the tokens these name are
 * touched, the bias's ids and the tokens the row has seen, never the whole vocabulary: a step costs a row
 * O(bias + distinct tokens seen), and a row without penalties has no RowPenalties at all.
 */
import type { Penalties } from './protocol.js';

/**
 * A bias of -100 is OpenAI's ban ("should result in a ban or exclusive selection of the relevant token"): it is
 * taken as -Infinity, so that the token is never chosen however large its logit; any other bias is added.
 */
export const BAN_BIAS = -100;

export class RowPenalties {
  /** The distinct generated tokens, in the order they first came, and how often each came: plain arrays so a step walks them without allocating. */
  private readonly outputIds: number[] = [];
  private readonly outputCounts: number[] = [];
  /** Where a generated token sits in outputIds. */
  private readonly outputIndex = new Map<number, number>();
  /** The prompt's and the generated tokens, kept only for a repetition penalty. */
  private readonly seen: Set<number> | null;

  constructor(private readonly penalties: Penalties, promptIds: readonly number[]) {
    this.seen = penalties.repetitionPenalty === 1 ? null : new Set(promptIds);
  }

  /** Adjusts one row of logits, logits[offset, offset + vocabulary), in place. */
  apply(logits: Float32Array, offset: number): void {
    this.applyBias(logits, offset);
    this.applyRepetition(logits, offset);
    this.applyFrequencyAndPresence(logits, offset);
  }

  /** Counts a token the row generated. */
  record(token: number): void {
    this.seen?.add(token);
    const at = this.outputIndex.get(token);
    if (at !== undefined) {
      this.outputCounts[at]++;
      return;
    }
    this.outputIndex.set(token, this.outputIds.length);
    this.outputIds.push(token);
    this.outputCounts.push(1);
  }

  private applyBias(logits: Float32Array, offset: number): void {
    for (const [id, bias] of this.penalties.logitBias) {
      logits[offset + id] = bias <= BAN_BIAS ? Number.NEGATIVE_INFINITY : logits[offset + id] + bias;
    }
  }

  /** Each seen token once: a positive logit is divided by the penalty, any other multiplied, so a penalty above 1 always lowers it. */
  private applyRepetition(logits: Float32Array, offset: number): void {
    if (this.seen === null) return;
    const penalty = this.penalties.repetitionPenalty;
    for (const id of this.seen) {
      const logit = logits[offset + id];
      logits[offset + id] = logit > 0 ? logit / penalty : logit * penalty;
    }
  }

  private applyFrequencyAndPresence(logits: Float32Array, offset: number): void {
    const { frequencyPenalty, presencePenalty } = this.penalties;
    if (frequencyPenalty === 0 && presencePenalty === 0) return;
    for (let i = 0; i < this.outputIds.length; i++) {
      logits[offset + this.outputIds[i]] -= frequencyPenalty * this.outputCounts[i] + presencePenalty;
    }
  }
}
