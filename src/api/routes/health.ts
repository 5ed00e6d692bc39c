import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import type { CompletionService } from '../../service.js';
import { unavailableError } from '../admission/refusals.js';
import { errorResponses } from '../schemas/common.js';

export async function healthRoutes(app: FastifyInstance, options: { service: CompletionService }): Promise<void> {
  const { service } = options;
  app.get('/health/live', {
    schema: { summary: 'Liveness: the process answers', tags: ['health'], security: [], response: { 200: { description: 'OK', content: { 'application/json': { schema: Type.Ref('Live') } } } } },
  }, async () => ({ status: 'ok' as const }));
  const ready = async () => {
    const unavailable = unavailableError(service.state, service.failure);
    if (unavailable !== null) throw unavailable;
    return { status: 'ready' as const, model: service.modelName, execution_provider: service.provider ?? 'unknown' };
  };
  const readySchema = (summary: string) => ({
    summary,
    tags: ['health'],
    security: [],
    response: { 200: { description: 'OK', content: { 'application/json': { schema: Type.Ref('Ready') } } }, ...errorResponses(503) },
  });
  app.get('/health/ready', { schema: readySchema('Readiness: 200 once the model is loaded and the warm-up run passed') }, ready);
  // vLLM's probe path, which routers and its deployment charts poll: 200 when it serves, 503 otherwise
  app.get('/health', { schema: readySchema("vLLM's health check: the same answer as /health/ready (200 when ready, 503 while loading, failed or draining)") }, ready);
}
