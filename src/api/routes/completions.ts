/**
 * POST /v1/completions: admission, then either the whole response as JSON or a server-sent-event stream.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import type { Completion } from '../../batching/completion.js';
import type { Metrics } from '../../observability/metrics.js';
import type { CompletionService } from '../../service.js';
import { admit, promptSources, type AdmissionOptions } from '../admission/admit.js';
import { refusalsBeforeBody } from '../admission/before-body.js';
import { bodyLimit } from '../admission/limits.js';
import { gather, streamEvents, streamOutcome, type StreamShape } from '../completions/event-stream.js';
import { ChoiceBuilder, TextOffsets, buildResponse, charLength, logprobsOf, type ResponseHead } from '../completions/format.js';
import { errorResponses } from '../schemas/common.js';
import type { CompletionRequest, Logprobs } from '../schemas/completions.js';
import { chatCompletionRoute } from './chat.js';

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
      const completion = await admit(body, () => promptSources(body.prompt), service, request, admission);
      request.log.debug({ prompts: completion.rows, mode: completion.params.mode, user: body.user ?? undefined }, 'completion admitted');
      reply.raw.on('close', () => completion.cancel());
      const head: ResponseHead = { id: `cmpl-${randomUUID().replaceAll('-', '')}`, created: Math.floor(Date.now() / 1000), model: body.model };
      if (body.stream === true) return streamEvents(request, reply, completion, body.stream_options?.include_usage === true, completionChunks(completion, head));
      return collect(completion, head);
    },
  );
  chatCompletionRoute(app, { service, admission, bodyLimit: limit });
}

async function collect(completion: Completion, head: ResponseHead) {
  const { params } = completion;
  const choices = completion.choiceTexts().map((text, i) => new ChoiceBuilder(i, text, params.echo, params.sampling.logprobs !== null));
  const { batch, usage } = await gather(completion, choices);
  return buildResponse(head, choices.map((c) => c.build()), usage, batch);
}

/** The stream's text_completion chunks; an echoed prompt comes first, with its logprobs when asked for. */
function completionChunks(completion: Completion, head: ResponseHead): StreamShape {
  const { params } = completion;
  const prompts = completion.choiceTexts();
  const offsets = prompts.map((text) => new TextOffsets(params.echo ? 0 : charLength(text)));
  const chunk = (choices: unknown[], extra: object = {}) => ({ id: head.id, object: 'text_completion', created: head.created, model: head.model, choices, ...extra });
  const choice = (index: number, text: string, logprobs: Logprobs | null, finish: 'stop' | 'length' | null) => chunk([{ text, index, logprobs, finish_reason: finish }]);
  return {
    batched: () => (params.echo && params.sampling.logprobs === null ? prompts.map((text, i) => choice(i, text, null, null)) : []),
    prompt: (index, logprobs) => {
      offsets[index] = TextOffsets.forEcho(prompts[index], logprobs);
      return [choice(index, prompts[index], logprobsOf(logprobs, offsets[index]), null)];
    },
    text: (index, text, logprob) => [choice(index, text, logprob === undefined ? null : logprobsOf([logprob], offsets[index]), null)],
    finish: (index, reason) => [choice(index, '', null, reason)],
    usage: (usage) => chunk([], { usage }),
  };
}
