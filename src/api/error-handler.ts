/**
 * Every error answer, whatever raised it, leaves in OpenAI's shape { error: { message, type, param, code } }:
 * the route and hook errors (fastify's error handler), unknown routes, URLs fastify cannot route, requests
 * Node's HTTP parser rejects before fastify sees them ('clientError'), and Expect headers Node refuses.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { ServiceError, type ErrorCode } from '../errors.js';
import { unknownFieldError } from './admission/refusals.js';

/** The parameter a JSON-schema validation error is about ("/max_tokens" -> "max_tokens"). */
function paramOf(error: FastifyError): string | null {
  const first = error.validation?.[0];
  if (first === undefined) return null;
  const missing = (first.params as { missingProperty?: string } | undefined)?.missingProperty;
  const path = first.instancePath.replace(/^\//, '').split('/')[0];
  return missing ?? (path === '' ? null : path);
}

type ValidationIssue = NonNullable<FastifyError['validation']>[number];

/** The top-level body field a schema with additionalProperties: false did not know, if that is what failed. */
function unknownField(issues: readonly ValidationIssue[]): string | null {
  const issue = issues.find((i) => i.keyword === 'additionalProperties' && i.instancePath === '');
  return (issue?.params as { additionalProperty?: string } | undefined)?.additionalProperty ?? null;
}

/** One readable sentence from ajv's errors: type alternatives of one field are merged ("must be string or array"). */
function describeValidation(issues: readonly ValidationIssue[]): string {
  const types = new Map<string, string[]>();
  const other: string[] = [];
  for (const issue of issues) {
    const field = issue.instancePath.replace(/^\//, '').replaceAll('/', '.') || 'body';
    const type = (issue.params as { type?: string } | undefined)?.type;
    if (issue.keyword === 'type' && type !== undefined) types.set(field, [...(types.get(field) ?? []), type]);
    else if (issue.keyword !== 'anyOf') other.push(`${field} ${issue.message ?? 'is invalid'}`);
  }
  const merged = [...types].map(([field, list]) => `${field} must be ${[...new Set(list)].join(' or ')}`);
  return [...new Set([...other, ...merged])].slice(0, 3).join('; ') || 'the body does not match the schema';
}

const CODE_OF_STATUS: Record<number, ErrorCode> = {
  404: 'not_found',
  408: 'request_timeout',
  413: 'payload_too_large',
  414: 'uri_too_long',
  415: 'unsupported_media_type',
  417: 'expectation_failed',
  431: 'headers_too_large',
};

function codeForStatus(status: number): ErrorCode {
  return CODE_OF_STATUS[status] ?? (status >= 500 ? 'internal_error' : 'invalid_request');
}

/** What the connection's client gets when the request cannot be read to its end (the socket will close). */
function closesConnection(status: number): boolean {
  return status === 408 || status === 413 || status === 431;
}

/** The ServiceError a client gets for `error`, and its status (a framework 4xx keeps its own). */
function asServiceError(error: FastifyError | ServiceError, request: FastifyRequest): { service: ServiceError; status: number } {
  if (error instanceof ServiceError) return { service: error, status: error.status };
  if (error.validation) {
    const unknown = unknownField(error.validation);
    if (unknown !== null) {
      const service = unknownFieldError(unknown);
      return { service, status: service.status };
    }
    const service = new ServiceError('invalid_request', `Invalid request: ${describeValidation(error.validation)}.`, { param: paramOf(error) });
    return { service, status: service.status };
  }
  if (typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500) {
    return { service: new ServiceError(codeForStatus(error.statusCode), error.message), status: error.statusCode };
  }
  request.log.error({ err: error }, 'unhandled error');
  const service = new ServiceError('internal_error', 'Internal server error.');
  return { service, status: service.status };
}

function sendError(error: FastifyError | ServiceError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const { service, status } = asServiceError(error, request);
  if (status >= 500) request.log.warn({ code: service.code }, service.message);
  if (service.retryAfterSeconds !== undefined) reply.header('retry-after', String(service.retryAfterSeconds));
  if (closesConnection(status)) reply.header('connection', 'close');
  return reply.code(status).send(service.toJSON());
}

/**
 * Unknown routes: a path that exists under other methods gets 405 with Allow (RFC 9110), any other 404. The
 * routes are registered after this plugin, so its hook sees them all.
 */
function answerUnknownRoutes(app: FastifyInstance): void {
  const routes: Array<{ methods: string[]; pattern: RegExp }> = [];
  app.addHook('onRoute', (route) => {
    const methods = (Array.isArray(route.method) ? route.method : [route.method]).map(String);
    const pattern = new RegExp(`^${route.url.split('/').map((part) => (part.startsWith(':') ? '[^/]+' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))).join('/')}$`);
    routes.push({ methods, pattern });
  });
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0];
    const allowed = [...new Set(routes.filter((r) => r.pattern.test(path)).flatMap((r) => r.methods))].filter((m) => m !== request.method);
    if (allowed.length > 0) {
      reply.header('allow', allowed.join(', '));
      return reply.code(405).send(new ServiceError('method_not_allowed', `${request.method} is not allowed on ${path}; use ${allowed.join(' or ')}.`).toJSON());
    }
    const error = new ServiceError('not_found', `No route for ${request.method} ${request.url}.`);
    return reply.code(404).send(error.toJSON());
  });
}

/** Node answers an Expect other than 100-continue with a bare 417 unless someone listens. */
function answerExpectations(app: FastifyInstance): void {
  app.server.on('checkExpectation', (request: IncomingMessage, response: ServerResponse) => {
    const error = new ServiceError('expectation_failed', `Expect: ${request.headers.expect ?? ''} is not supported; only 100-continue is.`, { param: 'expect' });
    const body = JSON.stringify(error.toJSON());
    response.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), connection: 'close' });
    response.end(body);
  });
}

/** The error handler, the not-found handler and the Expect listener, for the whole app (before any route). */
export const errorHandling = fp(async (app: FastifyInstance) => {
  app.setErrorHandler(sendError);
  answerUnknownRoutes(app);
  answerExpectations(app);
}, { name: 'chameleon-error-handling', fastify: '5.x' });

/** fastify's `frameworkErrors`: URLs it cannot route (bad percent-encoding, a path parameter that is too long). */
export function frameworkErrors(error: FastifyError, _request: FastifyRequest, reply: FastifyReply): void {
  const status = error.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 414 : error.statusCode ?? 400;
  const message = error.code === 'FST_ERR_BAD_URL' ? `The URL is not valid (bad percent-encoding): ${error.message}` : error.message;
  void reply.code(status).send(new ServiceError(codeForStatus(status), message).toJSON());
}

const PARSER_ERRORS: Record<string, { status: number; message: string }> = {
  ERR_HTTP_REQUEST_TIMEOUT: { status: 408, message: 'The request was not received in time (HEADERS_TIMEOUT_MS / RECEIVE_TIMEOUT_MS).' },
  HPE_HEADER_OVERFLOW: { status: 431, message: 'The request headers are too large.' },
};

/**
 * fastify's `clientErrorHandler`, for requests Node's HTTP parser rejects (bad chunking, a duplicate
 * Content-Length, an invalid method or header, too large headers, a timeout): the socket cannot be reused,
 * so the answer says `Connection: close`.
 */
export function clientErrorHandler(this: FastifyInstance, error: NodeJS.ErrnoException, socket: Socket): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  // A response already under way on this socket must not be corrupted by a second status line.
  const inFlight = (socket as Socket & { _httpMessage?: ServerResponse })._httpMessage;
  if (socket.writable && (inFlight === undefined || inFlight === null || !inFlight.headersSent)) {
    const known = PARSER_ERRORS[error.code ?? ''];
    const status = known?.status ?? 400;
    const message = known?.message ?? `Malformed HTTP request: ${error.message.replace(/^Parse Error: /, '')}${error.code ? ` (${error.code})` : ''}.`;
    const body = JSON.stringify(new ServiceError(codeForStatus(status), message).toJSON());
    this.log.debug({ err: error }, 'malformed request refused');
    // An answer to HEAD has no body (RFC 9110): a client would read one as the start of the next response.
    const head = (error as { rawPacket?: Buffer }).rawPacket?.subarray(0, 5).toString('latin1') === 'HEAD ';
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${head ? '' : body}`,
      () => socket.destroy(),
    );
    return;
  }
  socket.destroy();
}
