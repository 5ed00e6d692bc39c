/**
 * What the completions route refuses before it reads a body, the cheapest way to say 429 to a burst: a full queue,
 * and a large body while the large bodies' byte budget is spent. Registered inside the route's plugin, so that
 * only that route is checked.
 *
 * Large bodies share a byte budget (a token bucket that holds one largest body and refills at a fixed rate): a
 * client that keeps sending maximum-size bodies, which no real prompt needs (a whole context of text is a few
 * kilobytes), would otherwise keep the event loop decoding and parsing half a megabyte every few milliseconds,
 * while every stream, probe and ordinary request waits behind that work.
 */
import { Transform, pipeline } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { CompletionService } from '../../service.js';
import { LARGE_BODY_BYTES } from './limits.js';
import { largeBodiesError, queueFullError } from './refusals.js';

const LARGE_BODY_BYTES_PER_SECOND = 4 * 1024 * 1024;
/**
 * A large body's refusal is sent after a pause (a tarpit): a client that ignores Retry-After and sends its next large
 * body at once would otherwise cost a connection, headers and an error reply every millisecond or so, which is CPU
 * taken from the engine. Ordinary requests never wait here.
 */
const LARGE_BODY_REFUSAL_DELAY_MS = 250;

export interface RefusalsBeforeBodyOptions {
  service: Pick<CompletionService, 'queueRoom' | 'claimCores'>;
  /** The route's body limit: the budget holds one such body; larger ones are refused unread (413) anyway. */
  bodyLimit: number | undefined;
  retryAfterSeconds: number;
}

class ByteBudget {
  private bytes: number;
  private at = performance.now();

  constructor(readonly capacity: number, private readonly perSecond: number) {
    this.bytes = capacity;
  }

  /** Takes `bytes`; false (and nothing taken) when the budget holds less. */
  spend(bytes: number): boolean {
    const now = performance.now();
    this.bytes = Math.min(this.capacity, this.bytes + ((now - this.at) / 1000) * this.perSecond);
    this.at = now;
    if (bytes > this.bytes) return false;
    this.bytes -= bytes;
    return true;
  }
}

async function refuseBeforeBody(app: FastifyInstance, options: RefusalsBeforeBodyOptions): Promise<void> {
  const { service, retryAfterSeconds } = options;
  const budget = new ByteBudget(options.bodyLimit ?? Number.POSITIVE_INFINITY, LARGE_BODY_BYTES_PER_SECOND);
  app.addHook('onRequest', async (request, reply) => {
    if (service.queueRoom === 0) {
      service.claimCores?.();
      throw queueFullError(retryAfterSeconds);
    }
    const declared = request.headers['content-length'];
    if (declared === undefined) return; // no body, or a chunked one: counted as it arrives (preParsing)
    const length = Number(declared);
    if (!(length > LARGE_BODY_BYTES) || length > budget.capacity) return; // small, or refused unread by the body limit (413)
    if (!budget.spend(length)) {
      reply.header('connection', 'close'); // not worth reading the body only to discard it
      await new Promise((resolve) => setTimeout(resolve, LARGE_BODY_REFUSAL_DELAY_MS));
      throw largeBodiesError(retryAfterSeconds);
    }
  });
  // A chunked body declares no length: once it has grown past LARGE_BODY_BYTES, what it has sent and everything
  // after is charged as it arrives, and it is cut short with the same 429 when the budget runs out.
  app.addHook('preParsing', async (request, reply, payload) => {
    if (request.headers['content-length'] !== undefined || request.headers['transfer-encoding'] === undefined) return payload;
    let received = 0;
    let charged = 0;
    const counted = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        received += chunk.length;
        if (received > LARGE_BODY_BYTES) {
          if (!budget.spend(received - charged)) {
            reply.header('connection', 'close');
            done(largeBodiesError(retryAfterSeconds));
            return;
          }
          charged = received;
        }
        done(null, chunk);
      },
    });
    pipeline(payload, counted, () => {});
    return counted;
  });
}

export const refusalsBeforeBody = fp(refuseBeforeBody, { name: 'chameleon-refusals-before-body', fastify: '5.x' });
