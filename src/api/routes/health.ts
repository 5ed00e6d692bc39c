import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import { ServiceError } from '../../errors.js';
import type { CompletionService } from '../../service.js';
import { errorResponses } from '../schemas/common.js';

export async function healthRoutes(app: FastifyInstance, options: { service: CompletionService }): Promise<void> {
  const { service } = options;
  app.get('/health/live', {
    schema: { summary: 'Liveness: the process answers', tags: ['health'], response: { 200: { description: 'OK', content: { 'application/json': { schema: Type.Ref('Live') } } } } },
  }, async () => ({ status: 'ok' as const }));
  app.get('/health/ready', {
    schema: {
      summary: 'Readiness: 200 once the model is loaded and the warm-up run passed',
      tags: ['health'],
      response: { 200: { description: 'OK', content: { 'application/json': { schema: Type.Ref('Ready') } } }, ...errorResponses(503) },
    },
  }, async () => {
    if (service.state !== 'ready') {
      const why = service.state === 'failed' ? `the model failed to load: ${service.failure?.message ?? 'unknown error'}`
        : service.state === 'loading' ? 'the model is loading' : 'the server is shutting down';
      throw new ServiceError(service.state === 'loading' || service.state === 'failed' ? 'not_ready' : 'shutting_down', `Not ready: ${why}.`, { retryAfterSeconds: 1 });
    }
    return { status: 'ready' as const, model: service.modelName, execution_provider: service.provider ?? 'unknown' };
  });
}
