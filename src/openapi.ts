/**
 * The OpenAPI document, generated from the routes' schemas (no model needed): `npm run openapi` writes it to
 * openapi/openapi.json, and a test fails when the committed file differs from what the routes produce.
 */
import { AdapterRegistry } from './adaptation/adapters.js';
import { buildApp } from './app.js';
import { configWith } from './config.js';
import { ServiceError } from './errors.js';
import type { CompletionService } from './service.js';

/** A service that never loads a model: enough to register the routes. */
function schemaOnlyService(modelName: string): CompletionService {
  return {
    state: 'loading',
    failure: null,
    provider: null,
    modelName,
    contextLength: 0,
    tokenizer: null,
    chatTemplate: null,
    created: 0,
    queueRoom: 1,
    adapters: new AdapterRegistry(0, { vocabSize: 0, dim: 0, maxRank: 0 }, modelName),
    adaptationModes: ['batch', 'request', 'static', 'none'],
    defaultAdaptation: 'batch',
    submit: () => 'closed',
    loadAdapter() {
      throw new ServiceError('not_ready', 'No model in schema-only mode.');
    },
    adapterFromExamples() {
      throw new ServiceError('not_ready', 'No model in schema-only mode.');
    },
  };
}

export async function openApiDocument(): Promise<Record<string, unknown>> {
  const config = configWith({ logLevel: 'silent' });
  const app = await buildApp(config, { service: schemaOnlyService(config.modelName), logger: false });
  await app.ready();
  const document = app.swagger() as unknown as Record<string, unknown>;
  await app.close();
  return JSON.parse(JSON.stringify(document)) as Record<string, unknown>;
}

export function serialise(document: unknown): string {
  return `${JSON.stringify(document, null, 2)}\n`;
}
