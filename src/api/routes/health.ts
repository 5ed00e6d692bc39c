import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import type { CompletionService } from '../../service.js';
import { unavailableError } from '../admission/refusals.js';
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
    const unavailable = unavailableError(service.state, service.failure);
    if (unavailable !== null) throw unavailable;
    return { status: 'ready' as const, model: service.modelName, execution_provider: service.provider ?? 'unknown' };
  });
}
