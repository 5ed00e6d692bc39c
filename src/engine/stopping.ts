/**
 * Turns one row's generated token ids into text deltas, and finds stop strings.
 *
 * Byte-level BPE tokens can end inside a UTF-8 character, and a stop string can span tokens, so text is
 * released only when it is final: trailing replacement characters (an unfinished character) and a tail that
 * could still grow into a stop string are held back until the next token decides them.
 */
const REPLACEMENT = '\uFFFD';

export interface PushResult {
  /** Text that became final with this token (may be empty). */
  delta: string;
  /** True when a stop string was found: the row is finished and the stop string is not part of the text. */
  stopped: boolean;
}

export class TextTracker {
  private readonly ids: number[] = [];
  private readonly stops: string[];
  private full = '';
  private emitted = 0;
  private end: number | null = null;

  constructor(private readonly decode: (ids: readonly number[]) => string, stop: readonly string[]) {
    this.stops = stop.filter((s) => s.length > 0);
  }

  /** Adds one generated token. */
  push(id: number): PushResult {
    if (this.end !== null) return { delta: '', stopped: true };
    this.ids.push(id);
    this.full = this.decode(this.ids);
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
    let safe = this.full.length;
    while (safe > this.emitted && this.full[safe - 1] === REPLACEMENT) safe--;
    safe -= this.pendingStopPrefix(safe);
    if (safe <= this.emitted) return { delta: '', stopped: false };
    const delta = this.full.slice(this.emitted, safe);
    this.emitted = safe;
    return { delta, stopped: false };
  }

  /** The row ended for another reason (length, end of text): everything not yet released is final. */
  flush(): string {
    if (this.end !== null) return '';
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
