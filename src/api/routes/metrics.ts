import type { FastifyInstance } from 'fastify';
import type { Metrics } from '../../observability/metrics.js';

export async function metricsRoutes(app: FastifyInstance, options: { metrics: Metrics }): Promise<void> {
  const { registry } = options.metrics;
  app.get('/metrics', {
    schema: {
      summary: 'Prometheus metrics',
      description: 'Queue depth, batch size, clusters per batch, adaptation time, forward time per step, time to first token, tokens generated, requests by status, by adaptation mode and by named adapter; and the vLLM-named series routers and dashboards read (vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc, vllm:time_to_first_token_seconds, vllm:inter_token_latency_seconds, vllm:e2e_request_latency_seconds, vllm:prompt_tokens_total, vllm:generation_tokens_total, vllm:lora_requests_info).',
      tags: ['observability'],
      produces: ['text/plain'],
    },
  }, async (_request, reply) => {
    reply.header('content-type', registry.contentType);
    return registry.metrics();
  });
}
