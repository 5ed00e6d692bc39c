/**
 * The server-sent-event side of the completion routes: the response taken from fastify for a stream, and the status a
 * stream ended with (sent as 200 before its outcome was known), which the request counter reads.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';

const outcomes = new WeakMap<FastifyRequest, number>();

export function recordStreamOutcome(request: FastifyRequest, status: number): void {
  outcomes.set(request, status);
}

/** The status a stream ended with, or undefined for a request that was not streamed. */
export function streamOutcome(request: FastifyRequest): number | undefined {
  return outcomes.get(request);
}

/** Takes the response from fastify and starts the event stream; returns how to send one event. */
export function openEventStream(request: FastifyRequest, reply: FastifyReply): (data: unknown) => void {
  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-request-id': request.id,
  });
  return (data) => {
    if (!raw.destroyed) raw.write(`data: ${data === '[DONE]' ? data : JSON.stringify(data)}\n\n`);
  };
}
