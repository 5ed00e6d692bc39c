/**
 * The inference service behind the routes, as `app.chameleon`: opened (and its package checked) while the app is
 * built, so before anything listens; started in the background; drained when the app closes. It also enables the
 * full queue's refusal before fastify (api/fast-refusal.ts), which needs the service to ask.
 */
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { Config } from '../config.js';
import { Metrics } from '../observability/metrics.js';
import { InferenceService, type CompletionService } from '../service.js';
import type { FastRefusal } from './fast-refusal.js';

export interface ChameleonHandle {
  service: CompletionService;
  metrics: Metrics;
  /** Resolves once the model is loaded and warmed up; rejects when it cannot be (the process should stop). */
  started: Promise<void>;
  /** Registers a callback for an engine that dies after the start (the process should stop). */
  onFailure(listener: (error: Error) => void): void;
}

declare module 'fastify' {
  interface FastifyInstance {
    chameleon: ChameleonHandle;
  }
}

export interface InferenceOptions {
  config: Config;
  /** Replaces the inference service (tools such as the OpenAPI generator pass a stub). */
  service?: CompletionService;
  metrics?: Metrics;
  fastRefusal: FastRefusal;
}

function openService(app: FastifyInstance, config: Config, metrics: Metrics): Omit<ChameleonHandle, 'metrics'> {
  const service = InferenceService.open(config, metrics, app.log);
  const started = service.start();
  started.catch((error: Error) => app.log.error({ err: error }, `model failed to start: ${error.message}`));
  app.addHook('preClose', async () => {
    app.log.info('draining: no new requests; finishing admitted ones');
    await service.close();
  });
  return { service, started, onFailure: (listener) => service.onFailure(listener) };
}

export const inference = fp(async (app: FastifyInstance, options: InferenceOptions) => {
  const { config, fastRefusal } = options;
  const metrics = options.metrics ?? new Metrics({ modelName: config.modelName, slots: config.maxBatchSize });
  const handle = options.service === undefined
    ? openService(app, config, metrics)
    : { service: options.service, started: Promise.resolve(), onFailure: () => {} };
  app.decorate('chameleon', { ...handle, metrics });
  const { service } = handle;
  fastRefusal.enable({ queueRoom: () => service.queueRoom, onRefused: () => service.claimCores?.(), retryAfterSeconds: config.retryAfterSeconds, metrics });
}, { name: 'chameleon-inference', fastify: '5.x' });
