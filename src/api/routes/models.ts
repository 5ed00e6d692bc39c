import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import type { CompletionService } from '../../service.js';
import { modelNotFoundError } from '../admission/refusals.js';
import { errorResponses } from '../schemas/common.js';

/** GET /v1/models: the base model, then every named adapter as its own model with `parent` = the base (vLLM's listing). */
export async function modelRoutes(app: FastifyInstance, options: { service: CompletionService }): Promise<void> {
  const { service } = options;
  const base = service.modelName;
  const models = () => [
    {
      id: base, object: 'model' as const, created: service.created, owned_by: 'chameleon-serve', root: base, parent: null,
      max_model_len: service.contextLength, adaptation_modes: [...service.adaptationModes],
    },
    // one id per served mode, for clients that cannot send `adaptation`
    ...service.adaptationModes.map((mode) => ({ id: `${base}:${mode}`, object: 'model' as const, created: service.created, owned_by: 'chameleon-serve', root: base, parent: base, max_model_len: service.contextLength, adaptation_modes: [mode] })),
    ...service.adapters.list().map((a) => ({ id: a.id, object: 'model' as const, created: a.created, owned_by: 'chameleon-serve', root: base, parent: base })),
  ];
  app.get('/v1/models', {
    schema: { summary: 'List the served models (the base model and its named adapters)', tags: ['models'], response: { 200: { description: 'OK', content: { 'application/json': { schema: Type.Ref('ModelList') } } } } },
  }, async () => ({ object: 'list' as const, data: models() }));
  app.get('/v1/models/:model', {
    schema: {
      summary: 'Describe a model',
      tags: ['models'],
      params: Type.Object({ model: Type.String() }),
      response: { 200: { description: 'OK', content: { 'application/json': { schema: Type.Ref('Model') } } }, ...errorResponses(404) },
    },
  }, async (request) => {
    const { model: id } = request.params as { model: string };
    const found = models().find((m) => m.id === id);
    if (found === undefined) throw modelNotFoundError(id, base, service.adapters.list().map((a) => a.id));
    return found;
  });
}
