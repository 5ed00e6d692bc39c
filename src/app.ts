/**
 * Builds the fastify app from its parts: connection hygiene, the inference service, OpenAI-shaped errors, request
 * ids, header checks and authentication, OpenAPI + Swagger UI with the shared schemas, and the routes.
 * `buildApp(config)` is what the server and the tests use.
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { promptLimit } from './api/admission/limits.js';
import { ApiKeys, authentication } from './api/auth.js';
import { connectionHygiene, serverWithTimeouts } from './api/connections.js';
import { apiDocs } from './api/docs.js';
import { clientErrorHandler, errorHandling, frameworkErrors } from './api/error-handler.js';
import { FastRefusal } from './api/fast-refusal.js';
import { headerChecks, headerProblem } from './api/header-checks.js';
import { inference } from './api/inference.js';
import { requestIdOf, requestIds } from './api/request-ids.js';
import { adapterRoutes } from './api/routes/adapters.js';
import { completionRoutes } from './api/routes/completions.js';
import { healthRoutes } from './api/routes/health.js';
import { metricsRoutes } from './api/routes/metrics.js';
import { modelRoutes } from './api/routes/models.js';
import { tokenizerRoutes } from './api/routes/tokenizer.js';
import type { Config } from './config.js';
import type { Metrics } from './observability/metrics.js';
import type { CompletionService } from './service.js';

export interface AppOptions {
  /** Replaces the inference service (tools such as the OpenAPI generator pass a stub). */
  service?: CompletionService;
  metrics?: Metrics;
  /** fastify/pino logger options; default: JSON logs at config.logLevel. */
  logger?: FastifyServerOptions['logger'];
}

export async function buildApp(config: Config, options: AppOptions = {}): Promise<FastifyInstance> {
  const keys = new ApiKeys(config.apiKey, config.adminToken);
  // Made before fastify, for the server fastify makes; the inference plugin enables it once the service exists.
  const fastRefusal = new FastRefusal({
    requestId: requestIdOf,
    admissible: (request) => headerProblem(request) === null && keys.admit(request.headers.authorization),
  });
  const app = Fastify({
    logger: options.logger ?? { level: config.logLevel },
    genReqId: requestIdOf,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    serverFactory: serverWithTimeouts(config, fastRefusal.refused),
    clientErrorHandler,
    frameworkErrors,
    // While draining, requests already on a connection reach the routes and get a 503 in OpenAI's error shape.
    return503OnClosing: false,
  }).withTypeProvider<TypeBoxTypeProvider>();
  // Only JSON bodies: anything else is 415, not a string that fails the schema with a puzzling 400.
  app.removeContentTypeParser('text/plain');

  await app.register(connectionHygiene);
  // The service opens (and checks) the model package before anything listens.
  await app.register(inference, { config, service: options.service, metrics: options.metrics, fastRefusal });
  // Before every route, Swagger UI's included, so that each one answers errors in OpenAI's shape.
  await app.register(errorHandling);
  await app.register(requestIds);
  // The first hooks of every request: malformed header fields, then the API key.
  await app.register(headerChecks);
  await app.register(authentication, { keys, protects: config.apiKeyProtects });
  await app.register(apiDocs);

  const { service, metrics } = app.chameleon;
  const admission = { prompts: promptLimit(config), retryAfterSeconds: config.retryAfterSeconds, queued: fastRefusal.queued };
  await app.register(completionRoutes, { service, metrics, admission });
  await app.register(modelRoutes, { service });
  await app.register(adapterRoutes, { service, adminToken: config.adminToken });
  await app.register(tokenizerRoutes, { service });
  // Probes and scrapes log only warnings, unless the whole app is quieter than that.
  const quiet = ['fatal', 'error', 'silent'].includes(config.logLevel) ? config.logLevel : 'warn';
  await app.register(healthRoutes, { service, logLevel: quiet });
  await app.register(metricsRoutes, { metrics, logLevel: quiet });
  return app;
}
