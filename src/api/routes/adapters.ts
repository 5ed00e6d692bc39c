/**
 * Named adapters at run time (vLLM's load/unload, LoRAX's adapter library): list them, load one from a file or
 * make one from example texts, unload one. Loading and unloading are admin actions, allowed with
 * `Authorization: Bearer <ADMIN_TOKEN>`; without ADMIN_TOKEN they are disabled (403). The package's own adapters
 * cannot be unloaded, and files load only from ADAPTER_DIRS (adapter-files.ts).
 */
import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import type { NamedAdapter } from '../../adaptation/adapters.js';
import { DEFAULT_ADAPTATION_MODE } from '../../adaptation/modes.js';
import { ServiceError } from '../../errors.js';
import type { CompletionService } from '../../service.js';
import { examplesNeedHypernetworkError, unavailableError } from '../admission/refusals.js';
import { adminGuard } from '../auth.js';
import { errorResponses } from '../schemas/common.js';

export interface AdapterRouteOptions {
  service: CompletionService;
  adminToken: string;
}

const json = (ref: string) => ({ 'application/json': { schema: Type.Ref(ref) } });

export async function adapterRoutes(app: FastifyInstance, options: AdapterRouteOptions): Promise<void> {
  const { service, adminToken } = options;
  const describe = (a: NamedAdapter) => ({
    id: a.id, object: 'adapter' as const, created: a.created, parent: service.modelName, rank: a.factors.rank, source: a.source,
    ...(a.examples === undefined ? {} : { examples: a.examples }),
    ...(a.contextSimilarity === undefined ? {} : { context_similarity: a.contextSimilarity, gated: a.gated ?? false, dynamic_weight: a.dynamicWeight ?? 1 }),
  });
  const admin = adminGuard(adminToken);

  app.get('/v1/adapters', {
    schema: { summary: 'List the named adapters', tags: ['adapters'], response: { 200: { description: 'OK', content: json('AdapterList') } } },
  }, async () => ({ object: 'list' as const, data: service.adapters.list().map(describe) }));

  app.post('/v1/adapters', {
    onRequest: admin,
    schema: {
      summary: 'Load a named adapter from a file, or make one from example texts',
      description: 'Admin route (Authorization: Bearer <ADMIN_TOKEN>). The adapter is usable at once as `model` in completions. A `path` must lie inside ADAPTER_DIRS (unset: 403); any file that cannot be loaded gets the same 400, its reason in the server log. One file load runs at a time and one more waits; more get 429.',
      tags: ['adapters'],
      security: [{ adminToken: [] }],
      body: Type.Ref('LoadAdapterRequest'),
      response: { 201: { description: 'Loaded', content: json('Adapter') }, ...errorResponses(400, 401, 403, 409, 429, 503) },
    },
  }, async (request, reply) => {
    const body = request.body as { name: string; path?: string; examples?: string[] };
    if ((body.path === undefined) === (body.examples === undefined)) {
      throw new ServiceError('invalid_request', 'Give exactly one of path (an adapter file on the server) and examples (texts to make one from).', { param: body.path === undefined ? 'path' : 'examples' });
    }
    if (body.examples !== undefined) {
      if (!service.adaptationModes.includes(DEFAULT_ADAPTATION_MODE)) throw examplesNeedHypernetworkError();
      const unavailable = unavailableError(service.state, service.failure);
      if (unavailable !== null) throw unavailable;
    }
    // the path as asked and as resolved: the log is where an operator sees which file an adapter came from
    const { adapter, path } = body.path !== undefined
      ? await service.loadAdapter(body.name, body.path, request.log)
      : { adapter: await service.adapterFromExamples(body.name, body.examples!), path: undefined };
    request.log.info({ adapter: adapter.id, source: adapter.source, rank: adapter.factors.rank, path: body.path, resolvedPath: path }, 'adapter loaded');
    reply.code(201);
    return describe(adapter);
  });

  app.delete('/v1/adapters/:name', {
    onRequest: admin,
    schema: {
      summary: 'Unload a named adapter',
      description: 'Admin route (Authorization: Bearer <ADMIN_TOKEN>). Requests already running with it finish with it. The model package\'s own adapters cannot be unloaded (409).',
      tags: ['adapters'],
      security: [{ adminToken: [] }],
      params: Type.Object({ name: Type.String() }),
      response: { 200: { description: 'Unloaded', content: json('AdapterDeleted') }, ...errorResponses(401, 403, 404, 409) },
    },
  }, async (request) => {
    const { name } = request.params as { name: string };
    if (!service.adapters.remove(name)) throw new ServiceError('model_not_found', `There is no adapter named '${name}'.`, { param: 'name' });
    request.log.info({ adapter: name }, 'adapter unloaded');
    return { id: name, object: 'adapter' as const, deleted: true as const };
  });
}
