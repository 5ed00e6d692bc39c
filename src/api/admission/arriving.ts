/**
 * Completion requests that the early refusal let through and whose prompts are not queued yet: their bodies are
 * being read, parsed and tokenized. In a burst, every request's headers arrive before the first body has been
 * parsed, so a queue that counted only queued prompts looked empty to all of them: 194 of 203 refusals in a burst
 * of 240 went through fastify, parsing and tokenizing the prompts of requests the queue then refused. Counting the
 * arriving requests (one prompt each, the least a request brings) makes the early refusal see the queue as it will
 * be. A request stops counting once its prompts are queued (they count there from then on), when its response ends
 * (it was refused, or failed a check), or after HOLD_MS: a client that sends headers and then stalls its body holds
 * no place in the queue for longer than that.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

const HOLD_MS = 1000;

export class ArrivingRequests {
  private readonly holding = new Set<IncomingMessage>();
  /** In arrival order, so that expired ones are found at the front. */
  private readonly arrivals: Array<{ request: IncomingMessage; until: number }> = [];

  hold(request: IncomingMessage, response: ServerResponse): void {
    this.holding.add(request);
    this.arrivals.push({ request, until: performance.now() + HOLD_MS });
    response.once('close', () => this.release(request));
  }

  release(request: IncomingMessage): void {
    this.holding.delete(request);
  }

  get count(): number {
    const now = performance.now();
    let expired = 0;
    while (expired < this.arrivals.length && (this.arrivals[expired].until <= now || !this.holding.has(this.arrivals[expired].request))) {
      this.holding.delete(this.arrivals[expired].request);
      expired++;
    }
    if (expired > 0) this.arrivals.splice(0, expired);
    return this.holding.size;
  }
}
