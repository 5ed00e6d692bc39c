import type { FastifyInstance } from 'fastify';
import type { Metrics } from '../../observability/metrics.js';

export async function metricsRoutes(app: FastifyInstance, options: { metrics: Metrics }): Promise<void> {
  const { registry } = options.metrics;
  app.get('/metrics', {
    schema: {
      summary: 'Prometheus metrics',
      description: 'Queue depth, batch size, clusters per batch, adaptation time, forward time per step, time to first token, tokens generated, requests by status.',
      tags: ['observability'],
      produces: ['text/plain'],
    },
  }, async (_request, reply) => {
    reply.header('content-type', registry.contentType);
    return registry.metrics();
  });
}
