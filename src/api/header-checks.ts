/**
 * Header fields that Node's parser lets through and RFC 9112 says to refuse, counted on the raw header lines
 * (`request.headers` keeps only the first of a repeated Host or Authorization, and hides the others):
 * - an HTTP/1.1 request without Host, and any request with more than one (RFC 9112 §3.2; Node's own check,
 *   `requireHostHeader`, answers with an empty body, so it is off and this one answers in OpenAI's shape);
 * - more than one Authorization: which credential counts would depend on who reads the request (a proxy, this server);
 * - more than MAX_HEADER_FIELDS fields (Apache's default limit), which no client needs: Node keeps the first 2,000
 *   (`maxHeadersCount`) and silently drops the rest, which would hide a second Host or Authorization.
 */
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { ServiceError } from '../errors.js';

const MAX_HEADER_FIELDS = 100;

/** How many header lines of `request` are named `name` (lower case). */
function fieldLines(request: IncomingMessage, name: string): number {
  let count = 0;
  for (let i = 0; i < request.rawHeaders.length; i += 2) {
    if (request.rawHeaders[i]!.toLowerCase() === name) count++;
  }
  return count;
}

/** What is wrong with the request's header fields (see above), or null. */
export function headerProblem(request: IncomingMessage): ServiceError | null {
  if (request.rawHeaders.length / 2 > MAX_HEADER_FIELDS) {
    return new ServiceError('headers_too_large', `The request has more than ${MAX_HEADER_FIELDS} header fields.`);
  }
  const hosts = fieldLines(request, 'host');
  if (hosts > 1 || (hosts === 0 && request.httpVersion === '1.1')) {
    return new ServiceError('invalid_request', hosts === 0 ? 'An HTTP/1.1 request needs a Host header.' : 'The request has more than one Host header.', { param: 'host' });
  }
  if (fieldLines(request, 'authorization') > 1) {
    return new ServiceError('invalid_request', 'The request has more than one Authorization header.', { param: 'authorization' });
  }
  return null;
}

/** Refuses, before anything else looks at it, a request whose header fields are malformed (see above). */
export const headerChecks = fp(async (app: FastifyInstance) => {
  app.addHook('onRequest', async (request) => {
    const problem = headerProblem(request.raw);
    if (problem !== null) throw problem;
  });
}, { name: 'chameleon-header-checks', fastify: '5.x' });
