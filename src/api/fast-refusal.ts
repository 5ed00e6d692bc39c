/**
 * A completion that arrives while the queue is full, counting the requests still arriving (api/admission/arriving.ts),
 * is refused before fastify sees it. A 429 costs nothing to
 * decide, but going through fastify (routing, request and reply objects, hooks, the error handler, two log lines)
 * costs about as much again as everything Node does for the request; under a burst the refusals wait on each
 * other for the event loop, and the last of 240 got its answer about twice as late as from a bare node:http
 * server (`npm run load-check`). The server's request listener asks it first (api/connections.ts), so it is made
 * before fastify is, and refuses nothing until the inference plugin (api/inference.ts) enables it with the service;
 * the route's own check (api/admission/before-body.ts) still answers requests that do not come through the
 * server, such as `inject`. A request that fastify's first hooks would refuse (malformed header fields, no valid
 * API key) is left to them: without the key, a client learns nothing about the queue.
 *
 * These refusals are counted in /metrics (`chameleon_requests_total{status="429"}`, or 499 for a client that left
 * before the answer was sent) but not logged one by one.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Metrics } from '../observability/metrics.js';
import { LARGE_BODY_BYTES } from './admission/limits.js';
import { ArrivingRequests } from './admission/arriving.js';
import { queueFullError } from './admission/refusals.js';

/** What is known before fastify is made. */
export interface RequestChecks {
  /** The request's id (fastify's genReqId). */
  requestId: (request: IncomingMessage) => string;
  /** Whether fastify's first hooks would let the request through (header fields, API key). */
  admissible: (request: IncomingMessage) => boolean;
}

/** What the service brings. */
export interface FastRefusalOptions {
  /** Prompts the queue would take now. */
  queueRoom: () => number;
  /** Called for each refusal: the rest of a burst is coming, and the event loop wants the cores for it. */
  onRefused: () => void;
  retryAfterSeconds: number;
  metrics: Pick<Metrics, 'countRequest'>;
}

type Refuse = (request: IncomingMessage, response: ServerResponse) => boolean;

export class FastRefusal {
  private refuse: Refuse = () => false;
  private readonly arriving = new ArrivingRequests();

  constructor(private readonly checks: RequestChecks) {}

  /** Answers a completion request with 429 when the queue is full, and says whether it did. */
  readonly refused: Refuse = (request, response) => this.refuse(request, response);

  enable(options: FastRefusalOptions): void {
    this.refuse = fullQueueRefusal(options, this.checks, this.arriving);
  }

  /** The request's prompts are queued, and count there. */
  readonly queued = (request: IncomingMessage): void => this.arriving.release(request);
}

const COMPLETION_PATHS = new Set(['/v1/completions', '/v1/chat/completions']);

function fullQueueRefusal(options: FastRefusalOptions, checks: RequestChecks, arriving: ArrivingRequests): Refuse {
  const refusal = queueFullError(options.retryAfterSeconds);
  const body = JSON.stringify(refusal.toJSON());
  const length = String(Buffer.byteLength(body));
  return (request, response) => {
    if (request.method !== 'POST') return false;
    const url = request.url ?? '';
    const query = url.indexOf('?');
    if (!COMPLETION_PATHS.has(query < 0 ? url : url.slice(0, query)) || !checks.admissible(request)) return false;
    if (options.queueRoom() > arriving.count) {
      arriving.hold(request, response);
      return false;
    }
    response.writeHead(refusal.status, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': length,
      'retry-after': String(options.retryAfterSeconds),
      'x-request-id': checks.requestId(request),
      ...(Number(request.headers['content-length']) > LARGE_BODY_BYTES ? { connection: 'close' } : {}),
    });
    options.metrics.countRequest(response, () => refusal.status);
    response.end(body);
    options.onRefused();
    return true;
  };
}
