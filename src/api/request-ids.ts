/**
 * Request ids: a client's X-Request-Id is kept (fastify's requestIdHeader), any other request gets a new one, and
 * every answer says which it was, so that a client can quote it and find the request in the logs.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';

/** fastify's genReqId, also used by the refusal sent before fastify (api/fast-refusal.ts). */
export const newRequestId = (): string => `req-${randomUUID()}`;

export const requestIds = fp(async (app: FastifyInstance) => {
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-request-id', request.id);
  });
}, { name: 'chameleon-request-ids', fastify: '5.x' });
