/**
 * The OpenAPI document and Swagger UI (/docs), and the shared schemas the routes refer to by $id, which the
 * document lists as its components. Registered before the routes, which it collects as they are added.
 */
import { readFileSync } from 'node:fs';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { ErrorResponse } from './schemas/common.js';
import { chatSchemas } from './schemas/chat.js';
import { completionSchemas } from './schemas/completions.js';
import { Live, Ready } from './schemas/health.js';
import { tokenizerSchemas } from './schemas/tokenizer.js';
import { AdapterDeleted, AdapterList, AdapterObject, LoadAdapterRequest, ModelList, ModelObject } from './schemas/models.js';

const packageJson = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string; description: string };

const API_INFO = {
  title: 'chameleon-serve',
  description: `${packageJson.description}. OpenAI-compatible completions with batch-aware dynamic low-rank adaptation.`,
  version: packageJson.version,
};

export const apiDocs = fp(async (app: FastifyInstance) => {
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: API_INFO,
      components: {
        securitySchemes: {
          apiKey: { type: 'http', scheme: 'bearer', description: 'API_KEY, on a server that sets one (ADMIN_TOKEN works too)' },
          adminToken: { type: 'http', scheme: 'bearer', description: 'ADMIN_TOKEN' },
        },
      },
      // Every route but the health probes (their own `security: []`); so Swagger UI's Authorize button sends the key.
      security: [{ apiKey: [] }],
      tags: [
        { name: 'completions', description: 'OpenAI-compatible text completions' },
        { name: 'models', description: 'Served models: the base model and its named adapters' },
        { name: 'adapters', description: 'Named LoRA adapters: list, load from a file, make from examples, unload' },
        { name: 'tokenizer', description: 'The served model\'s tokenizer (vLLM\'s routes)' },
        { name: 'health', description: 'Liveness and readiness probes' },
        { name: 'observability', description: 'Prometheus metrics' },
      ],
    },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  for (const schema of [ErrorResponse, ...completionSchemas, ...chatSchemas, ModelObject, ModelList, AdapterObject, AdapterList, AdapterDeleted, LoadAdapterRequest, ...tokenizerSchemas, Live, Ready]) {
    app.addSchema(schema);
  }
}, { name: 'chameleon-docs', fastify: '5.x' });
