/**
 * Request ids: a client's X-Request-Id is kept when it looks like an id, any other request gets a new one, and
 * every answer says which it was, so that a client can quote it and find the request in the logs. An id is copied
 * into every log line and response header of its request, so anything longer or odder than an id (log-line noise,
 * markup for a log viewer, a megabyte of header) is replaced rather than echoed.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';

const CLIENT_ID = /^[A-Za-z0-9._:-]{1,128}$/;

const newRequestId = (): string => `req-${randomUUID()}`;

/** fastify's genReqId, also used by the refusal sent before fastify (api/fast-refusal.ts). */
export function requestIdOf(request: IncomingMessage): string {
  const given = request.headers['x-request-id'];
  return typeof given === 'string' && CLIENT_ID.test(given) ? given : newRequestId();
}

export const requestIds = fp(async (app: FastifyInstance) => {
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-request-id', request.id);
  });
}, { name: 'chameleon-request-ids', fastify: '5.x' });
