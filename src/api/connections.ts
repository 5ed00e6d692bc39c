/**
 * Connection hygiene. Node keeps a connection that never finishes its headers, and an idle keep-alive one,
 * open for as long as the client likes, and `server.close()` waits for both. Here the timeouts are set (a
 * half-open connection is closed with 408 after HEADERS_TIMEOUT_MS), and closing the app first stops listening,
 * then closes every connection that has no admitted request on it (idle ones, half-open ones, ones still
 * uploading a body), lets the others finish their response and closes each as soon as it has.
 *
 * `Expect: 100-continue` is answered with 100 only when the body is about to be read: Node would send it as soon as
 * the headers arrive, inviting a client to upload a body that is then refused unread (a full queue, a spent
 * large-body budget, a body over the limit). Those refusals are the final answer instead, as RFC 9110 allows; the
 * ones that come later (an unknown route, a content type that is not JSON) still follow a 100.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance, FastifyServerFactory } from 'fastify';
import fp from 'fastify-plugin';
import type { Config } from '../config.js';

/** How long a closed connection may take to say goodbye (FIN) before it is destroyed. */
const LINGER_MS = 1000;

export interface ConnectionTracker {
  /** Resolves once no connection is left open (after the app started closing). */
  settled(): Promise<void>;
}

declare module 'fastify' {
  interface FastifyInstance {
    connections: ConnectionTracker;
  }
}

/**
 * fastify's `serverFactory`: the server fastify would make, with the timeouts, whose requests are offered to
 * `refusedFirst` (api/fast-refusal.ts) before fastify handles them.
 */
export function serverWithTimeouts(
  config: Pick<Config, 'headersTimeoutMs' | 'receiveTimeoutMs' | 'keepAliveTimeoutMs'>,
  refusedFirst: (request: IncomingMessage, response: ServerResponse) => boolean,
): FastifyServerFactory {
  return (handler) => {
    const server = createServer({
      headersTimeout: Math.min(config.headersTimeoutMs, config.receiveTimeoutMs),
      // Node checks both timeouts on this interval (30 s by default, which would let a half-open socket live that long).
      connectionsCheckingInterval: 1000,
      // Node's own answer to a missing Host has an empty body; api/header-checks.ts answers it in OpenAI's shape.
      requireHostHeader: false,
    }, (request, response) => {
      if (!refusedFirst(request, response)) handler(request, response);
    });
    server.keepAliveTimeout = config.keepAliveTimeoutMs;
    server.requestTimeout = config.receiveTimeoutMs;
    return server;
  };
}

/** Sends 100 Continue only once the body is about to be read (see above). */
function continueWhenRead(app: FastifyInstance): void {
  const awaitingContinue = new WeakSet<IncomingMessage>();
  app.server.on('checkContinue', (request: IncomingMessage, response: ServerResponse) => {
    awaitingContinue.add(request);
    app.server.emit('request', request, response);
  });
  app.addHook('preParsing', (request, reply, payload, done) => {
    if (awaitingContinue.has(request.raw) && !(Number(request.headers['content-length']) > request.routeOptions.bodyLimit)) {
      reply.raw.writeContinue();
    }
    done(null, payload);
  });
}

/** Tracks every connection and the request on it, so that closing can tell idle ones from busy ones. */
function trackConnections(app: FastifyInstance): void {
  const server = app.server;
  const sockets = new Set<Socket>();
  const requests = new Map<Socket, { request: IncomingMessage; response: ServerResponse }>();
  let closing = false;
  let wakeSettled: (() => void) | null = null;

  const hangUp = (socket: Socket) => {
    socket.end();
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
  };

  server.on('connection', (socket: Socket) => {
    if (closing) {
      socket.destroy();
      return;
    }
    sockets.add(socket);
    socket.once('close', () => {
      sockets.delete(socket);
      requests.delete(socket);
      if (sockets.size === 0) wakeSettled?.();
    });
  });
  // First of the request listeners, so that the header is set before any handler (api/fast-refusal.ts) answers.
  server.prependListener('request', (request: IncomingMessage, response: ServerResponse) => {
    const socket = request.socket;
    requests.set(socket, { request, response });
    if (closing) response.setHeader('connection', 'close');
    response.once('close', () => {
      if (requests.get(socket)?.request === request) requests.delete(socket);
      if (closing) hangUp(socket);
    });
  });

  app.addHook('preClose', async () => {
    closing = true;
    server.close();
    for (const socket of sockets) {
      const busy = requests.get(socket);
      if (busy === undefined || !busy.request.complete) socket.destroy();
      else if (!busy.response.headersSent) busy.response.setHeader('connection', 'close');
    }
  });

  app.decorate('connections', {
    settled: () => (sockets.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => { wakeSettled = resolve; })),
  });
}

/** Registered first, so that its preClose hook stops listening before the service drains. */
export const connectionHygiene = fp(async (app: FastifyInstance) => {
  trackConnections(app);
  continueWhenRead(app);
}, { name: 'chameleon-connections', fastify: '5.x' });
