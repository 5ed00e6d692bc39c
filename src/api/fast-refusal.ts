/**
 * A completion that arrives while the queue is full is refused before fastify sees it. A 429 costs nothing to
 * decide, but going through fastify (routing, request and reply objects, hooks, the error handler, two log lines)
 * costs about as much again as everything Node does for the request; under a burst the refusals wait on each
 * other for the event loop, and the last of 240 got its answer about twice as late as from a bare node:http
 * server (`npm run load-check`). Installed through fastify's `serverFactory`; the routes' own check (an onRequest
 * hook) still answers requests that do not come through the server, such as `inject`.
 *
 * These refusals are counted in /metrics (`chameleon_requests_total{status="429"}`, or 499 for a client that left
 * before the answer was sent) but not logged one by one.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ServiceError } from '../errors.js';

export interface FastRefusalOptions {
  queueFull: () => boolean;
  retryAfterSeconds: number;
  /** Called once per refusal with its outcome, as the routes count theirs: 429 once sent, 499 when the client left first. */
  counted: (status: '429' | '499') => void;
}

/** A declared body this large is not read after the refusal: the connection is closed instead. */
const DRAIN_LIMIT_BYTES = 64 * 1024;

/** Returns a handler that answers a completion request with 429 when the queue is full, and says whether it did. */
export function fullQueueRefusal(options: FastRefusalOptions): (request: IncomingMessage, response: ServerResponse) => boolean {
  const refusal = new ServiceError('queue_full', 'The request queue is full; retry later.', { retryAfterSeconds: options.retryAfterSeconds });
  const body = JSON.stringify(refusal.toJSON());
  const length = String(Buffer.byteLength(body));
  return (request, response) => {
    if (request.method !== 'POST' || !options.queueFull()) return false;
    const url = request.url ?? '';
    const query = url.indexOf('?');
    if ((query < 0 ? url : url.slice(0, query)) !== '/v1/completions') return false;
    const incomingId = request.headers['x-request-id'];
    try {
      response.writeHead(refusal.status, {
        'content-type': 'application/json; charset=utf-8',
        'content-length': length,
        'retry-after': String(options.retryAfterSeconds),
        'x-request-id': typeof incomingId === 'string' && incomingId !== '' ? incomingId : `req-${randomUUID()}`,
        ...(Number(request.headers['content-length']) > DRAIN_LIMIT_BYTES ? { connection: 'close' } : {}),
      });
    } catch {
      return false; // a header Node will not write (an odd x-request-id): fastify answers instead, with its own checks
    }
    let sent = false;
    response.once('finish', () => {
      sent = true;
      options.counted('429');
    });
    response.once('close', () => {
      if (!sent) options.counted('499');
    });
    response.end(body);
    return true;
  };
}
