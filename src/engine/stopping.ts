/**
 * Turns one row's generated token ids into text deltas, and finds stop strings.
 *
 * Byte-level BPE tokens can end inside a UTF-8 character, and a stop string can span tokens, so text is
 * released only when it is final: an unfinished character and a tail that could still grow into a stop string are
 * held back until the next token decides them. Decoding is incremental (each token's bytes through one streaming
 * UTF-8 decoder, which keeps an unfinished character back and, like the tokenizer's byte-level decoder, replaces
 * invalid bytes with U+FFFD): re-decoding the whole text at every token would add to every decode step a cost that
 * grows with each row's text and with the rows in flight.
 */

export interface PushResult {
  /** Text that became final with this token (may be empty). */
  delta: string;
  /** True when a stop string was found: the row is finished and the stop string is not part of the text. */
  stopped: boolean;
}

export class TextTracker {
  private readonly stops: string[];
  private readonly utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
  private full = '';
  private emitted = 0;
  private end: number | null = null;

  /** `bytes(id)`: the bytes a generated token stands for (none for special tokens, which the text leaves out). */
  constructor(private readonly bytes: (id: number) => Uint8Array, stop: readonly string[]) {
    this.stops = stop.filter((s) => s.length > 0);
  }

  /** Adds one generated token. */
  push(id: number): PushResult {
    if (this.end !== null) return { delta: '', stopped: true };
    this.full += this.utf8.decode(this.bytes(id), { stream: true });
    let stopAt = -1;
    for (const stop of this.stops) {
      const at = this.full.indexOf(stop, Math.max(0, this.emitted - stop.length + 1));
      if (at >= 0 && (stopAt < 0 || at < stopAt)) stopAt = at;
    }
    if (stopAt >= 0) {
      const cut = Math.max(stopAt, this.emitted);
      const delta = this.full.slice(this.emitted, cut);
      this.emitted = cut;
      this.end = cut;
      return { delta, stopped: true };
    }
    const safe = this.full.length - this.pendingStopPrefix(this.full.length);
    if (safe <= this.emitted) return { delta: '', stopped: false };
    const delta = this.full.slice(this.emitted, safe);
    this.emitted = safe;
    return { delta, stopped: false };
  }

  /** The row ended for another reason (length, end of text): everything not yet released is final. */
  flush(): string {
    if (this.end !== null) return '';
    this.full += this.utf8.decode();
    const delta = this.full.slice(this.emitted);
    this.emitted = this.full.length;
    this.end = this.full.length;
    return delta;
  }

  /** The completion text so far (final once stopped or flushed). */
  get text(): string {
    return this.full.slice(0, this.end ?? this.emitted);
  }

  /** Length of the longest tail of full[..upTo) that is a proper prefix of a stop string. */
  private pendingStopPrefix(upTo: number): number {
    let longest = 0;
    for (const stop of this.stops) {
      for (let k = Math.min(stop.length - 1, upTo - this.emitted); k > longest; k--) {
        if (this.full.startsWith(stop.slice(0, k), upTo - k)) {
          longest = k;
          break;
        }
      }
    }
    return longest;
  }
}
