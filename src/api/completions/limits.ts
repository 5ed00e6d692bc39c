/**
 * What the completions route refuses before reading a body, shared by its hooks and by the refusal sent before
 * fastify (api/fast-refusal.ts).
 */
import { ServiceError } from '../../errors.js';

/**
 * Bodies larger than this are "large": parsing and checking one costs the event loop milliseconds, so they share a
 * byte budget, and those beyond it are refused with 429 before they are read; a refused one is not drained either.
 */
export const LARGE_BODY_BYTES = 64 * 1024;

export function fullQueueError(retryAfterSeconds: number): ServiceError {
  return new ServiceError('queue_full', 'The request queue is full; retry later.', { retryAfterSeconds });
}
