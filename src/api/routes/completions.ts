/**
 * POST /v1/completions: admission, then either the whole response as JSON or a server-sent-event stream.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import Type from 'typebox';
import type { BatchInfo, Completion } from '../../batching/completion.js';
import { ServiceError } from '../../errors.js';
import type { Metrics } from '../../observability/metrics.js';
import type { CompletionService } from '../../service.js';
import { admit, promptSources, type AdmissionOptions } from '../admission/admit.js';
import { refusalsBeforeBody } from '../admission/before-body.js';
import { bodyLimit } from '../admission/limits.js';
import { chatCompletionRoute } from './chat.js';
import { openEventStream, recordStreamOutcome, streamOutcome } from '../completions/event-stream.js';
import { ChoiceBuilder, TextOffsets, buildResponse, chameleonInfo, charLength, logprobsOf, publicFinish, usageOf, type ResponseHead } from '../completions/format.js';
import { errorResponses } from '../schemas/common.js';
import type { CompletionRequest } from '../schemas/completions.js';

export interface CompletionRouteOptions {
  service: CompletionService;
  metrics: Metrics;
  admission: AdmissionOptions;
}

export async function completionRoutes(app: FastifyInstance, options: CompletionRouteOptions): Promise<void> {
  const { service, metrics, admission } = options;

  // Counted once per request: the status sent (a stream's outcome), or 499 when the client left before the end.
  app.addHook('onRequest', async (request, reply) => {
    metrics.countRequest(reply.raw, () => streamOutcome(request) ?? reply.raw.statusCode);
  });
  const limit = bodyLimit(service, admission.prompts);
  await app.register(refusalsBeforeBody, { service, bodyLimit: limit, retryAfterSeconds: admission.retryAfterSeconds });

  app.post(
    '/v1/completions',
    {
      bodyLimit: limit,
      schema: {
        summary: 'Create a completion (OpenAI-compatible)',
        description:
          'Generates a completion for each prompt. With `stream: true` the answer is a `text/event-stream` of ' +
          'completion chunks ending with `data: [DONE]`. Requests that arrive within one batch window are served ' +
          'together and adapted per cluster (ChameleonLLM); see the `adaptation` field and the `chameleon` object.',
        tags: ['completions'],
        body: Type.Ref('CompletionRequest'),
        response: {
          200: {
            description: 'The completion (JSON), or with `stream: true` an event stream of completion chunks',
            content: {
              'application/json': { schema: Type.Ref('CompletionResponse') },
              'text/event-stream': { schema: Type.String({ description: 'Lines `data: <completion chunk JSON>`, ending with `data: [DONE]`' }) },
            },
          },
          ...errorResponses(400, 404, 413, 415, 429, 500, 503, 504),
        },
      },
    },
    async (request, reply) => {
      const body = request.body as CompletionRequest;
      const completion = await admit(body, () => promptSources(body.prompt), service, request.id, admission);
      request.log.debug({ prompts: completion.rows, mode: completion.params.mode, user: body.user ?? undefined }, 'completion admitted');
      reply.raw.on('close', () => completion.cancel());
      const head: ResponseHead = { id: `cmpl-${randomUUID().replaceAll('-', '')}`, created: Math.floor(Date.now() / 1000), model: body.model };
      if (body.stream === true) return stream(request, reply, completion, head, body.stream_options?.include_usage === true);
      return collect(completion, head);
    },
  );
  chatCompletionRoute(app, { service, admission, bodyLimit: limit });
}

async function collect(completion: Completion, head: ResponseHead) {
  const { params } = completion;
  const choices = completion.choiceTexts().map((text, i) => new ChoiceBuilder(i, text, params.echo, params.sampling.logprobs !== null));
  let batch: BatchInfo | null = null;
  for await (const event of completion.events()) {
    switch (event.type) {
      case 'batched':
        batch = event.batch;
        break;
      case 'prompt':
        choices[event.choice].promptLogprobs(event.logprobs);
        break;
      case 'text':
        choices[event.choice].append(event.text, event.logprob);
        break;
      case 'finish':
        choices[event.choice].finished(event.reason, event.completionTokens);
        break;
      case 'error':
        throw event.error;
      case 'done':
        break;
    }
  }
  if (batch === null) throw new ServiceError('internal_error', 'The request ended without being batched.');
  const tokens = choices.reduce((sum, c) => sum + c.tokens, 0);
  return buildResponse(head, choices.map((c) => c.build()), usageOf(completion, tokens), batch);
}

async function stream(request: FastifyRequest, reply: FastifyReply, completion: Completion, head: ResponseHead, includeUsage: boolean): Promise<void> {
  const send = openEventStream(request, reply);
  const { params } = completion;
  const prompts = completion.choiceTexts();
  const offsets = prompts.map((text) => new TextOffsets(params.echo ? 0 : charLength(text)));
  let chameleon: ReturnType<typeof chameleonInfo> | null = null;
  let tokens = 0;
  const chunk = (choice: number, text: string, logprobs: ReturnType<typeof logprobsOf> | null, finish: 'stop' | 'length' | null) => ({
    id: head.id,
    object: 'text_completion',
    created: head.created,
    model: head.model,
    choices: [{ text, index: choice, logprobs, finish_reason: finish }],
    ...(chameleon ? { chameleon } : {}),
  });
  let status = 200;
  for await (const event of completion.events()) {
    switch (event.type) {
      case 'batched':
        chameleon = chameleonInfo(event.batch);
        if (params.echo && params.sampling.logprobs === null) prompts.forEach((text, i) => send(chunk(i, text, null, null)));
        break;
      case 'prompt':
        offsets[event.choice] = TextOffsets.forEcho(prompts[event.choice], event.logprobs);
        send(chunk(event.choice, prompts[event.choice], logprobsOf(event.logprobs, offsets[event.choice]!), null));
        break;
      case 'text':
        send(chunk(event.choice, event.text, event.logprob === undefined ? null : logprobsOf([event.logprob], offsets[event.choice]), null));
        break;
      case 'finish':
        tokens += event.completionTokens;
        if (event.reason !== 'cancelled') send(chunk(event.choice, '', null, publicFinish(event.reason)));
        break;
      case 'error':
        // As vLLM does: the error as one more event, then the usual end, so that clients stop cleanly.
        status = event.error.status;
        send(event.error.toJSON());
        send('[DONE]');
        break;
      case 'done':
        if (includeUsage) send({ id: head.id, object: 'text_completion', created: head.created, model: head.model, choices: [], usage: usageOf(completion, tokens), ...(chameleon ? { chameleon } : {}) });
        send('[DONE]');
        break;
    }
  }
  recordStreamOutcome(request, status);
  request.log.info({ statusCode: status, streamed: true, tokens }, 'stream completed');
  reply.raw.end();
}
