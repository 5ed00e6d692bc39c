/**
 * Builds the fastify app from its parts: logging with request ids, OpenAPI + Swagger UI, the shared schemas,
 * OpenAI-shaped errors, the routes, and the inference service behind them. `buildApp(config)` is what the
 * server and the tests use.
 */
import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { installConnectionHygiene, type ConnectionTracker } from './api/connections.js';
import { clientErrorHandler, frameworkErrors, installErrorHandling } from './api/error-handler.js';
import { fullQueueRefusal } from './api/fast-refusal.js';
import { adapterRoutes } from './api/routes/adapters.js';
import { completionRoutes } from './api/routes/completions.js';
import { healthRoutes } from './api/routes/health.js';
import { metricsRoutes } from './api/routes/metrics.js';
import { modelRoutes } from './api/routes/models.js';
import { ErrorResponse } from './api/schemas/common.js';
import { completionSchemas } from './api/schemas/completions.js';
import { Live, Ready } from './api/schemas/health.js';
import { AdapterDeleted, AdapterList, AdapterObject, LoadAdapterRequest, ModelList, ModelObject } from './api/schemas/models.js';
import type { Config } from './config.js';
import { Metrics } from './observability/metrics.js';
import { InferenceService, type CompletionService } from './service.js';

export interface ChameleonHandle {
  service: CompletionService;
  metrics: Metrics;
  /** Resolves once the model is loaded and warmed up; rejects when it cannot be (the process should stop). */
  started: Promise<void>;
  /** Registers a callback for an engine that dies after the start (the process should stop). */
  onFailure(listener: (error: Error) => void): void;
  /** The open connections: after close(), `connections.settled()` resolves when the last one is gone. */
  connections: ConnectionTracker;
}

declare module 'fastify' {
  interface FastifyInstance {
    chameleon: ChameleonHandle;
  }
}

export interface AppOptions {
  /** Replaces the inference service (tools such as the OpenAPI generator pass a stub). */
  service?: CompletionService;
  metrics?: Metrics;
  /** fastify/pino logger options; default: JSON logs at config.logLevel. */
  logger?: FastifyServerOptions['logger'];
}

const packageJson = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string; description: string };

export const API_INFO = {
  title: 'chameleon-serve',
  description: `${packageJson.description}. OpenAI-compatible completions with batch-aware dynamic low-rank adaptation.`,
  version: packageJson.version,
};

export async function buildApp(config: Config, options: AppOptions = {}): Promise<FastifyInstance> {
  const metrics = options.metrics ?? new Metrics();
  const receiveTimeout = config.receiveTimeoutMs;
  let refusedBeforeFastify: (request: IncomingMessage, response: ServerResponse) => boolean = () => false;
  const newRequestId = () => `req-${randomUUID()}`;
  const app = Fastify({
    logger: options.logger ?? { level: config.logLevel },
    requestIdHeader: 'x-request-id',
    genReqId: newRequestId,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    // The server is made here (what fastify would make, with the timeouts) so that a full queue's 429 can be sent
    // before fastify handles the request (api/fast-refusal.ts).
    serverFactory: (handler) => {
      // Node checks both timeouts on this interval (30 s by default, which would let a half-open socket live that long).
      const server = createServer({ headersTimeout: Math.min(config.headersTimeoutMs, receiveTimeout), connectionsCheckingInterval: 1000 }, (request, response) => {
        if (!refusedBeforeFastify(request, response)) handler(request, response);
      });
      server.keepAliveTimeout = config.keepAliveTimeoutMs;
      server.requestTimeout = receiveTimeout;
      return server;
    },
    clientErrorHandler,
    frameworkErrors,
    // While draining, requests already on a connection reach the routes and get a 503 in OpenAI's error shape.
    return503OnClosing: false,
  }).withTypeProvider<TypeBoxTypeProvider>();
  const connections = installConnectionHygiene(app);
  // Only JSON bodies: anything else is 415, not a string that fails the schema with a puzzling 400.
  app.removeContentTypeParser('text/plain');

  // The service opens (and checks) the model package before anything listens.
  let service: CompletionService;
  let started: Promise<void>;
  let onFailure: ChameleonHandle['onFailure'] = () => {};
  if (options.service !== undefined) {
    service = options.service;
    started = Promise.resolve();
  } else {
    const real = InferenceService.open(config, metrics, app.log);
    service = real;
    started = real.start();
    onFailure = (listener) => real.onFailure(listener);
    started.catch((error: Error) => app.log.error({ err: error }, `model failed to start: ${error.message}`));
    app.addHook('preClose', async () => {
      app.log.info('draining: no new requests; finishing admitted ones');
      await real.close();
    });
  }
  app.decorate('chameleon', { service, metrics, started, onFailure, connections });
  refusedBeforeFastify = fullQueueRefusal({
    queueFull: () => service.queueFull,
    retryAfterSeconds: config.retryAfterSeconds,
    metrics,
    newRequestId,
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: API_INFO,
      components: { securitySchemes: { adminToken: { type: 'http', scheme: 'bearer', description: 'ADMIN_TOKEN' } } },
      tags: [
        { name: 'completions', description: 'OpenAI-compatible text completions' },
        { name: 'models', description: 'Served models: the base model and its named adapters' },
        { name: 'adapters', description: 'Named LoRA adapters: list, load from a file, make from examples, unload' },
        { name: 'health', description: 'Liveness and readiness probes' },
        { name: 'observability', description: 'Prometheus metrics' },
      ],
    },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  for (const schema of [ErrorResponse, ...completionSchemas, ModelObject, ModelList, AdapterObject, AdapterList, AdapterDeleted, LoadAdapterRequest, Live, Ready]) {
    app.addSchema(schema);
  }
  installErrorHandling(app);

  app.addHook('onSend', async (request, reply) => {
    reply.header('x-request-id', request.id);
  });

  await app.register(completionRoutes, { service, metrics, maxPrompts: config.maxBatchSize, retryAfterSeconds: config.retryAfterSeconds });
  await app.register(modelRoutes, { service });
  await app.register(adapterRoutes, { service, adminToken: config.adminToken });
  // Probes and scrapes log only warnings, unless the whole app is quieter than that.
  const quiet = ['fatal', 'error', 'silent'].includes(config.logLevel) ? config.logLevel : 'warn';
  await app.register(healthRoutes, { service, logLevel: quiet });
  await app.register(metricsRoutes, { metrics, logLevel: quiet });
  return app;
}
