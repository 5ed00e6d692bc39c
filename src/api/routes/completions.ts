/**
 * POST /v1/completions: admission, then either the whole response as JSON or a server-sent-event stream.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import Type from 'typebox';
import type { BatchInfo, Completion } from '../../batching/completion.js';
import { ServiceError } from '../../errors.js';
import type { CompletionService } from '../../service.js';
import { admit } from '../completions/admission.js';
import { ChoiceBuilder, buildResponse, chameleonInfo, logprobsOf, publicFinish, usageOf, type ResponseHead } from '../completions/format.js';
import { errorResponses } from '../schemas/common.js';
import type { CompletionRequest } from '../schemas/completions.js';

export async function completionRoutes(app: FastifyInstance, options: { service: CompletionService }): Promise<void> {
  const { service } = options;
  app.post(
    '/v1/completions',
    {
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
          ...errorResponses(400, 404, 429, 500, 503, 504),
        },
      },
    },
    async (request, reply) => {
      const body = request.body as CompletionRequest;
      const completion = admit(body, service, request.id);
      service.submit(completion);
      request.log.debug({ prompts: completion.rows, mode: completion.params.mode, user: body.user ?? undefined }, 'completion admitted');
      reply.raw.on('close', () => completion.cancel());
      const head: ResponseHead = { id: `cmpl-${randomUUID().replaceAll('-', '')}`, created: Math.floor(Date.now() / 1000), model: service.modelName };
      if (body.stream === true) return stream(request, reply, completion, head, body.stream_options?.include_usage === true);
      return collect(completion, head);
    },
  );
}

async function collect(completion: Completion, head: ResponseHead) {
  const { params, prompts } = completion;
  const choices = prompts.map((p, i) => new ChoiceBuilder(i, p.text, params.echo, params.logprobs !== null));
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
  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-request-id': request.id,
  });
  const send = (data: unknown) => {
    if (!raw.destroyed) raw.write(`data: ${JSON.stringify(data)}\n\n`);
  };
  const { params, prompts } = completion;
  const offsets = prompts.map((p) => (params.echo ? 0 : p.text.length));
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
        if (params.echo && params.logprobs === null) prompts.forEach((p, i) => send(chunk(i, p.text, null, null)));
        break;
      case 'prompt': {
        const logprobs = logprobsOf(event.logprobs, 0);
        offsets[event.choice] = logprobs.tokens.reduce((at, t) => at + t.length, 0);
        send(chunk(event.choice, prompts[event.choice].text, logprobs, null));
        break;
      }
      case 'text': {
        let logprobs = null;
        if (event.logprob !== undefined) {
          logprobs = logprobsOf([event.logprob], offsets[event.choice]);
          offsets[event.choice] += event.logprob.token.length;
        }
        send(chunk(event.choice, event.text, logprobs, null));
        break;
      }
      case 'finish':
        tokens += event.completionTokens;
        if (event.reason !== 'cancelled') send(chunk(event.choice, '', null, publicFinish(event.reason)));
        break;
      case 'error':
        status = event.error.status;
        send(event.error.toJSON());
        break;
      case 'done':
        if (includeUsage) send({ id: head.id, object: 'text_completion', created: head.created, model: head.model, choices: [], usage: usageOf(completion, tokens), ...(chameleon ? { chameleon } : {}) });
        if (!raw.destroyed) raw.write('data: [DONE]\n\n');
        break;
    }
  }
  request.log.info({ statusCode: status, streamed: true, tokens }, 'stream completed');
  raw.end();
}
