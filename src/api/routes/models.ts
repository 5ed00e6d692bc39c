import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import { ServiceError } from '../../errors.js';
import type { CompletionService } from '../../service.js';
import { errorResponses } from '../schemas/common.js';

export async function modelRoutes(app: FastifyInstance, options: { service: CompletionService }): Promise<void> {
  const { service } = options;
  const model = () => ({ id: service.modelName, object: 'model' as const, created: service.created, owned_by: 'chameleon-serve' });
  app.get('/v1/models', {
    schema: { summary: 'List the served models', tags: ['models'], response: { 200: { description: 'OK', content: { 'application/json': { schema: Type.Ref('ModelList') } } } } },
  }, async () => ({ object: 'list' as const, data: [model()] }));
  app.get('/v1/models/:model', {
    schema: {
      summary: 'Describe a model',
      tags: ['models'],
      params: Type.Object({ model: Type.String() }),
      response: { 200: { description: 'OK', content: { 'application/json': { schema: Type.Ref('Model') } } }, ...errorResponses(404) },
    },
  }, async (request) => {
    const { model: id } = request.params as { model: string };
    if (id !== service.modelName) throw new ServiceError('model_not_found', `The model '${id}' does not exist; this server serves '${service.modelName}'.`, { param: 'model' });
    return model();
  });
}
