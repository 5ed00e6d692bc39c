/**
 * A completion that arrives while the queue is full is refused before fastify sees it. A 429 costs nothing to
 * decide, but going through fastify (routing, request and reply objects, hooks, the error handler, two log lines)
 * costs about as much again as everything Node does for the request; under a burst the refusals wait on each
 * other for the event loop, and the last of 240 got its answer about twice as late as from a bare node:http
 * server (`npm run load-check`). The server's request listener asks it first (api/connections.ts), so it is made
 * before fastify is, and refuses nothing until the inference plugin (api/inference.ts) enables it with the service;
 * the route's own check (api/admission/before-body.ts) still answers requests that do not come through the
 * server, such as `inject`.
 *
 * These refusals are counted in /metrics (`chameleon_requests_total{status="429"}`, or 499 for a client that left
 * before the answer was sent) but not logged one by one.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Metrics } from '../observability/metrics.js';
import { LARGE_BODY_BYTES } from './admission/limits.js';
import { queueFullError } from './admission/refusals.js';

export interface FastRefusalOptions {
  queueFull: () => boolean;
  retryAfterSeconds: number;
  metrics: Pick<Metrics, 'countRequest'>;
  /** The id of a request that brings none (fastify's genReqId). */
  newRequestId: () => string;
}

type Refuse = (request: IncomingMessage, response: ServerResponse) => boolean;

export class FastRefusal {
  private refuse: Refuse = () => false;

  /** Answers a completion request with 429 when the queue is full, and says whether it did. */
  readonly refused: Refuse = (request, response) => this.refuse(request, response);

  enable(options: FastRefusalOptions): void {
    this.refuse = fullQueueRefusal(options);
  }
}

function fullQueueRefusal(options: FastRefusalOptions): Refuse {
  const refusal = queueFullError(options.retryAfterSeconds);
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
        'x-request-id': typeof incomingId === 'string' && incomingId !== '' ? incomingId : options.newRequestId(),
        ...(Number(request.headers['content-length']) > LARGE_BODY_BYTES ? { connection: 'close' } : {}),
      });
    } catch {
      return false; // a header Node will not write (an odd x-request-id): fastify answers instead, with its own checks
    }
    options.metrics.countRequest(response, () => refusal.status);
    response.end(body);
    return true;
  };
}
