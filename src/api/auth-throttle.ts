/**
 * Failed authentications per client address. After `failures` failures within `windowMs`, the address is refused
 * for `blockMs` without its credentials being checked: guessing costs the guesser time, and a client stuck with a
 * wrong key stops filling the log. The table holds at most `addresses` entries; a failure from a new address when
 * it is full forgets the address that failed longest ago, so a flood of addresses costs bounded memory (at worst
 * it wipes some address's count, which a key of 32 characters can afford).
 */

export interface ThrottleLimits {
  failures: number;
  windowMs: number;
  blockMs: number;
  addresses: number;
}

export const DEFAULT_THROTTLE: ThrottleLimits = { failures: 10, windowMs: 60_000, blockMs: 60_000, addresses: 10_000 };

interface Failures {
  /** When the window of these failures started, ms. */
  since: number;
  count: number;
  /** Refused until then, ms (0: not blocked). */
  blockedUntil: number;
}

export class FailureThrottle {
  // A Map iterates in insertion order: re-inserting on each failure keeps the longest-quiet address first.
  private readonly table = new Map<string, Failures>();

  constructor(private readonly limits: ThrottleLimits = DEFAULT_THROTTLE, private readonly now: () => number = Date.now) {}

  /** Whole seconds the address is still refused for (0: it is not). */
  blockedFor(address: string): number {
    const entry = this.table.get(address);
    return entry === undefined ? 0 : this.secondsLeft(entry);
  }

  /** Counts a failure of `address`; returns the seconds it is now refused for (0: not yet). */
  fail(address: string): number {
    const now = this.now();
    let entry = this.table.get(address);
    const expired = entry !== undefined && (now - entry.since > this.limits.windowMs || (entry.blockedUntil > 0 && entry.blockedUntil <= now));
    if (entry === undefined || expired) entry = { since: now, count: 0, blockedUntil: 0 };
    entry.count++;
    if (entry.count >= this.limits.failures) entry.blockedUntil = now + this.limits.blockMs;
    this.table.delete(address);
    this.table.set(address, entry);
    if (this.table.size > this.limits.addresses) this.table.delete(this.table.keys().next().value!);
    return this.secondsLeft(entry);
  }

  /** Addresses in the table. */
  get size(): number {
    return this.table.size;
  }

  private secondsLeft(entry: Failures): number {
    return Math.max(0, Math.ceil((entry.blockedUntil - this.now()) / 1000));
  }
}
