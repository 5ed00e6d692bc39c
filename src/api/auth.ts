/**
 * Who may call what.
 * - API_KEY, when set: every route but the health probes needs `Authorization: Bearer <API_KEY>`, and so do
 *   /metrics and /docs unless API_KEY_PROTECTS leaves them open. ADMIN_TOKEN is taken too: an admin may do what a
 *   client may. A route is told by the route fastify matched, not by the URL, so that no spelling of a path (dot
 *   segments, percent-encoding, a trailing slash) reaches a handler under an open route's rule; a URL that no route
 *   matches (404, 405) needs the key as well, so a client without one learns nothing about the routes.
 * - ADMIN_TOKEN: the adapter admin routes (adminGuard, on those routes).
 * Keys are compared as SHA-256 digests with timingSafeEqual, as vLLM does: how long an answer takes says nothing
 * about how much of a guess was right, nor about the key's length. Every 401, whichever check gave it, is logged at
 * warn with the client's address (never a credential) and counted per address (api/auth-throttle.ts); an address
 * over the limit gets 429 on every route that is not open, without its credentials being checked.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { KeyProtected } from '../config.js';
import { ServiceError } from '../errors.js';
import { FailureThrottle } from './auth-throttle.js';

const sha256 = (text: string): Buffer => createHash('sha256').update(text).digest();

/** A configured key or token, kept as its digest: every comparison is of two 32-byte digests. */
class Secret {
  private readonly digest: Buffer;

  constructor(value: string) {
    this.digest = sha256(value);
  }

  matches(presented: string): boolean {
    return timingSafeEqual(sha256(presented), this.digest);
  }
}

/** The credential of `Authorization: Bearer <token>`, or null (no header, another scheme). */
function bearerToken(header: string | undefined): string | null {
  return /^Bearer\s+(\S+)\s*$/i.exec(header ?? '')?.[1] ?? null;
}

/** The keys that admit a client: API_KEY and ADMIN_TOKEN; with API_KEY unset, everyone is admitted. */
export class ApiKeys {
  private readonly secrets: Secret[];

  constructor(apiKey: string, adminToken: string) {
    this.secrets = apiKey === '' ? [] : [apiKey, adminToken].filter((key) => key !== '').map((key) => new Secret(key));
  }

  get required(): boolean {
    return this.secrets.length > 0;
  }

  /** Whether a request with this Authorization header value is admitted. */
  admit(authorization: string | undefined): boolean {
    if (!this.required) return true;
    const token = bearerToken(authorization);
    // Every key is compared, so the time does not tell which one matched.
    return token !== null && this.secrets.map((secret) => secret.matches(token)).includes(true);
  }
}

/** Routes anyone may call, by the pattern fastify matched: probes (kubelets, load balancers) send no key. */
const OPEN_ROUTES = new Set(['/health', '/health/live', '/health/ready']);

function needsKey(route: string | undefined, protects: readonly KeyProtected[]): boolean {
  if (route === undefined) return true;
  if (OPEN_ROUTES.has(route)) return false;
  if (route === '/metrics') return protects.includes('metrics');
  if (route === '/docs' || route.startsWith('/docs/')) return protects.includes('docs');
  return true;
}

export interface AuthenticationOptions {
  keys: ApiKeys;
  /** Which of /metrics and /docs need the key too (API_KEY_PROTECTS). */
  protects: readonly KeyProtected[];
}

/** The API key check, the throttle and the log of failures, for the whole app (registered before any route). */
export const authentication = fp(async (app: FastifyInstance, options: AuthenticationOptions) => {
  const { keys, protects } = options;
  const throttle = new FailureThrottle();
  app.addHook('onRequest', async (request, reply) => {
    if (!needsKey(request.routeOptions.url, protects)) return;
    const blocked = throttle.blockedFor(request.ip);
    if (blocked > 0) {
      throw new ServiceError('too_many_auth_failures', `Too many failed authentications from this address; retry in ${blocked} s.`, { retryAfterSeconds: blocked });
    }
    if (keys.admit(request.headers.authorization)) return;
    reply.header('www-authenticate', 'Bearer');
    throw new ServiceError('invalid_api_key', bearerToken(request.headers.authorization) === null ? 'Send the API key as Authorization: Bearer <API_KEY>.' : 'The API key is wrong.');
  });
  app.addHook('onResponse', async (request, reply) => {
    if (reply.statusCode !== 401) return;
    const blocked = throttle.fail(request.ip);
    request.log.warn({ client: request.ip, route: request.routeOptions.url ?? null }, 'authentication failed');
    if (blocked > 0) request.log.warn({ client: request.ip, seconds: blocked }, 'too many failed authentications: refusing this address for a while');
  });
}, { name: 'chameleon-authentication', fastify: '5.x' });

/** The onRequest hook of an admin route: ADMIN_TOKEN as the Bearer credential; without ADMIN_TOKEN the route is disabled (403). */
export function adminGuard(adminToken: string): (request: FastifyRequest, reply: FastifyReply) => Promise<void> {
  const secret = adminToken === '' ? null : new Secret(adminToken);
  return async (request, reply) => {
    if (secret === null) throw new ServiceError('admin_disabled', 'Adapter administration is disabled on this server: set ADMIN_TOKEN to enable it.');
    const token = bearerToken(request.headers.authorization);
    if (token === null || !secret.matches(token)) {
      reply.header('www-authenticate', 'Bearer');
      throw new ServiceError('unauthorized', token === null ? 'Send the admin token as Authorization: Bearer <ADMIN_TOKEN>.' : 'The admin token is wrong.');
    }
  };
}
