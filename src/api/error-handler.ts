/**
 * Every error answer, whatever raised it, leaves in OpenAI's shape { error: { message, type, param, code } }.
 */
import type { FastifyError, FastifyInstance } from 'fastify';
import { ServiceError, type ErrorCode } from '../errors.js';

/** The parameter a JSON-schema validation error is about ("/max_tokens" -> "max_tokens"). */
function paramOf(error: FastifyError): string | null {
  const first = error.validation?.[0];
  if (first === undefined) return null;
  const missing = (first.params as { missingProperty?: string } | undefined)?.missingProperty;
  const path = first.instancePath.replace(/^\//, '').split('/')[0];
  return missing ?? (path === '' ? null : path);
}

type ValidationIssue = NonNullable<FastifyError['validation']>[number];

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

function codeForStatus(status: number): ErrorCode {
  if (status === 404) return 'not_found';
  if (status >= 500) return 'internal_error';
  return 'invalid_request';
}

export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((error: FastifyError | ServiceError, request, reply) => {
    let service: ServiceError;
    if (error instanceof ServiceError) {
      service = error;
    } else if (error.validation) {
      const param = paramOf(error);
      service = new ServiceError('invalid_request', `Invalid request: ${describeValidation(error.validation)}.`, { param });
    } else if (typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500) {
      service = new ServiceError(codeForStatus(error.statusCode), error.message);
      reply.code(error.statusCode);
      return reply.send(service.toJSON());
    } else {
      request.log.error({ err: error }, 'unhandled error');
      service = new ServiceError('internal_error', 'Internal server error.');
    }
    if (service.status >= 500) request.log.warn({ code: service.code }, service.message);
    if (service.retryAfterSeconds !== undefined) reply.header('retry-after', String(service.retryAfterSeconds));
    return reply.code(service.status).send(service.toJSON());
  });

  app.setNotFoundHandler((request, reply) => {
    const error = new ServiceError('not_found', `No route for ${request.method} ${request.url}.`);
    return reply.code(404).send(error.toJSON());
  });
}
