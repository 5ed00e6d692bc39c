/** Starts the real app on the real default model package (models/default), for tests. */
import type { FastifyInstance } from 'fastify';
import { buildApp, type AppOptions } from '../../src/app.js';
import { configWith, type Config } from '../../src/config.js';

export const MODEL_DIR = process.env.TEST_MODEL_DIR ?? 'models/default';
export const MODEL = 'chameleon-default';

export function testConfig(overrides: Partial<Config> = {}): Config {
  return configWith({ modelDir: MODEL_DIR, logLevel: 'silent', host: '127.0.0.1', port: 0, threads: 1, ...overrides });
}

/** Builds the app and waits until the model is loaded and warmed up. */
export async function startApp(overrides: Partial<Config> = {}, options: AppOptions = {}): Promise<FastifyInstance> {
  const app = await buildApp(testConfig(overrides), options);
  await app.chameleon.started;
  await app.ready();
  return app;
}

/** POST /v1/completions through fastify.inject; returns status and parsed body. */
export async function complete(app: FastifyInstance, body: Record<string, unknown>): Promise<{ status: number; body: any; headers: Record<string, unknown> }> {
  const res = await app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, ...body } });
  return { status: res.statusCode, body: res.json(), headers: res.headers };
}

/** Parses an SSE body into its data payloads ('[DONE]' kept as a string). */
export function sseData(text: string): unknown[] {
  return text.split('\n\n').filter((block) => block.startsWith('data: ')).map((block) => {
    const data = block.slice('data: '.length);
    return data === '[DONE]' ? data : JSON.parse(data);
  });
}
