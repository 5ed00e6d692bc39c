/**
 * The event loop's claim on the cores, shared by the main thread and the inference thread (a SharedArrayBuffer, so
 * that neither waits on a message). While a burst is being refused, the main thread claims the cores for a few
 * milliseconds per refusal; the inference thread, between two decoder runs, waits until the claim has passed and
 * counts the time it gave up. A lower thread priority alone (ENGINE_NICE) only weighs the shares: on two cores the
 * inference threads still took most of the CPU from the event loop while it had 240 refusals to write, and the
 * last of them left about twice as late as from a server with nothing else to do (`npm run burst-check`).
 *
 * The pauses are bounded so that the requests already admitted keep moving when refusals never stop (clients that
 * retry at once, ignoring Retry-After): one pause lasts at most `longestPauseMs`, and the pauses are paid from a
 * budget that fills at `share` of the time the inference thread runs, up to `budgetMs`: a burst now and then is refused during
 * one whole pause, and a storm that never ends takes no more than about a tenth of the engine's time by default
 * (with refusals that never stopped, at 6,000 a second, a fixed 50 ms pause after every 200 ms of decoding cost the
 * admitted requests a quarter of their tokens/s). In the steady state nothing claims, and the inference thread pays
 * a clock read and one atomic load per run.
 */

/** Slots of the shared array: the claim's end (ms on the shared clock), the pauses' total (µs). */
const UNTIL = 0;
const PAUSED_US = 1;

export interface PausePolicy {
  /** A budget smaller than this is not spent: many short pauses cost the decoder more than they give the event loop. */
  shortestPauseMs: number;
  longestPauseMs: number;
  budgetMs: number;
  share: number;
}

export const DEFAULT_PAUSES: PausePolicy = { shortestPauseMs: 10, longestPauseMs: 50, budgetMs: 100, share: 0.1 };

/** Milliseconds on a clock every thread of the process reads alike (timeOrigin is per thread, their sum is not). */
function sharedNow(): number {
  return performance.timeOrigin + performance.now();
}

export class CoreClaim {
  private readonly slots: BigInt64Array;
  /** Inference thread: the milliseconds it may still pause, as of `budgetAt` (the last check or the end of the last pause). */
  private budget: number;
  private budgetAt = sharedNow();

  constructor(
    readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(2 * BigInt64Array.BYTES_PER_ELEMENT),
    private readonly policy: PausePolicy = DEFAULT_PAUSES,
  ) {
    this.slots = new BigInt64Array(buffer);
    this.budget = policy.budgetMs;
  }

  /** Main thread: the cores are the event loop's for the next `ms` (a later claim extends an earlier one). */
  claim(ms: number): void {
    const until = BigInt(Math.ceil(sharedNow() + ms));
    if (until > Atomics.load(this.slots, UNTIL)) {
      Atomics.store(this.slots, UNTIL, until);
      Atomics.notify(this.slots, UNTIL);
    }
  }

  /**
   * Inference thread, between two decoder runs: blocks while a claim lasts, within the policy's bounds (a claim
   * extended meanwhile is waited out too); returns the milliseconds it waited.
   */
  waitOut(): number {
    const started = sharedNow();
    if (Number(Atomics.load(this.slots, UNTIL)) <= started) return 0;
    this.budget = Math.min(this.policy.budgetMs, this.budget + (started - this.budgetAt) * this.policy.share);
    this.budgetAt = started;
    const longest = Math.min(this.policy.longestPauseMs, this.budget);
    if (longest < this.policy.shortestPauseMs) return 0;
    for (;;) {
      const until = Atomics.load(this.slots, UNTIL);
      const now = sharedNow();
      const left = Math.min(Number(until) - now, longest - (now - started));
      if (left <= 0) break;
      Atomics.wait(this.slots, UNTIL, until, left);
    }
    this.budgetAt = sharedNow();
    const waited = this.budgetAt - started;
    if (waited <= 0) return 0;
    this.budget -= waited;
    Atomics.add(this.slots, PAUSED_US, BigInt(Math.round(waited * 1000)));
    return waited;
  }

  /** Seconds the inference thread has given up to claims so far. */
  get pausedSeconds(): number {
    return Number(Atomics.load(this.slots, PAUSED_US)) / 1e6;
  }
}
