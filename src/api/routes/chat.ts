/**
 * POST /v1/chat/completions: the messages rendered with the package's chat template (api/chat/prompt.ts) are one
 * prompt, admitted, batched and adapted as a completion's is; the answer is an assistant message per choice, as JSON or
 * as a stream of chat.completion.chunk events (the role first, then the content, then the finish, then [DONE]).
 * Registered by the completion routes, whose admission hooks and request counter it shares.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import Type from 'typebox';
import type { BatchInfo, Completion } from '../../batching/completion.js';
import { ServiceError } from '../../errors.js';
import type { CompletionService } from '../../service.js';
import { admit, type AdmissionOptions, type RequestFields } from '../admission/admit.js';
import { chatPrompt } from '../chat/prompt.js';
import { buildChatResponse, ChatChoiceBuilder, chatLogprobsOf, type ChatDelta } from '../completions/chat-format.js';
import { openEventStream, recordStreamOutcome } from '../completions/event-stream.js';
import { chameleonInfo, publicFinish, usageOf, type ResponseHead } from '../completions/format.js';
import type { ChatCompletionRequest } from '../schemas/chat.js';
import { errorResponses } from '../schemas/common.js';

export interface ChatRouteOptions {
  service: CompletionService;
  admission: AdmissionOptions;
  bodyLimit: number | undefined;
}

/** The completions fields of a chat request: max_completion_tokens over max_tokens, logprobs as a count of alternatives. */
function requestFields(body: ChatCompletionRequest): RequestFields {
  const { messages: _messages, max_completion_tokens: maxCompletion, logprobs, top_logprobs: top, ...shared } = body;
  if (top != null && logprobs !== true) throw new ServiceError('invalid_request', 'top_logprobs needs logprobs: true.', { param: 'top_logprobs' });
  return { ...shared, max_tokens: maxCompletion ?? shared.max_tokens, logprobs: logprobs === true ? (top ?? 0) : null };
}

export function chatCompletionRoute(app: FastifyInstance, options: ChatRouteOptions): void {
  const { service, admission } = options;
  app.post(
    '/v1/chat/completions',
    {
      bodyLimit: options.bodyLimit,
      schema: {
        summary: 'Create a chat completion (OpenAI-compatible)',
        description:
          'Answers the conversation with the assistant\'s next message, the messages rendered with the model\'s chat template ' +
          '(a model without one answers 400). With `stream: true` the answer is a `text/event-stream` of chat completion chunks ' +
          'ending with `data: [DONE]`. Batched and adapted as completions are; adaptation reads the user and assistant messages ' +
          'without the template and without system messages.',
        tags: ['completions'],
        body: Type.Ref('ChatCompletionRequest'),
        response: {
          200: {
            description: 'The chat completion (JSON), or with `stream: true` an event stream of chat completion chunks',
            content: {
              'application/json': { schema: Type.Ref('ChatCompletionResponse') },
              'text/event-stream': { schema: Type.String({ description: 'Lines `data: <chat.completion.chunk JSON>`, ending with `data: [DONE]`' }) },
            },
          },
          ...errorResponses(400, 404, 413, 415, 429, 500, 503, 504),
        },
      },
    },
    async (request, reply) => {
      const body = request.body as ChatCompletionRequest;
      const fields = requestFields(body);
      const completion = await admit(fields, () => [chatPrompt(body.messages, service.chatTemplate, body.model)], service, request.id, admission);
      request.log.debug({ messages: body.messages.length, mode: completion.params.mode, user: body.user ?? undefined }, 'chat completion admitted');
      reply.raw.on('close', () => completion.cancel());
      const head: ResponseHead = { id: `chatcmpl-${randomUUID().replaceAll('-', '')}`, created: Math.floor(Date.now() / 1000), model: body.model };
      if (body.stream === true) return stream(request, reply, completion, head, body.stream_options?.include_usage === true);
      return collect(completion, head);
    },
  );
}

async function collect(completion: Completion, head: ResponseHead) {
  const choices = Array.from({ length: completion.rows }, (_, i) => new ChatChoiceBuilder(i, completion.params.sampling.logprobs !== null));
  let batch: BatchInfo | null = null;
  for await (const event of completion.events()) {
    switch (event.type) {
      case 'batched':
        batch = event.batch;
        break;
      case 'text':
        choices[event.choice].append(event.text, event.logprob);
        break;
      case 'finish':
        choices[event.choice].finished(event.reason, event.completionTokens);
        break;
      case 'error':
        throw event.error;
      case 'prompt':
      case 'done':
        break;
    }
  }
  if (batch === null) throw new ServiceError('internal_error', 'The request ended without being batched.');
  const tokens = choices.reduce((sum, c) => sum + c.tokens, 0);
  return buildChatResponse(head, choices.map((c) => c.build()), usageOf(completion, tokens), batch);
}

async function stream(request: FastifyRequest, reply: FastifyReply, completion: Completion, head: ResponseHead, includeUsage: boolean): Promise<void> {
  const send = openEventStream(request, reply);
  let chameleon: ReturnType<typeof chameleonInfo> | null = null;
  let tokens = 0;
  const chunk = (choices: ChatDelta[], extra: object = {}) => ({
    id: head.id, object: 'chat.completion.chunk', created: head.created, model: head.model, choices, ...extra, ...(chameleon ? { chameleon } : {}),
  });
  let status = 200;
  for await (const event of completion.events()) {
    switch (event.type) {
      case 'batched':
        chameleon = chameleonInfo(event.batch);
        for (let index = 0; index < completion.rows; index++) send(chunk([{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
        break;
      case 'text':
        send(chunk([{
          index: event.choice, delta: { content: event.text },
          logprobs: event.logprob === undefined ? null : { content: chatLogprobsOf([event.logprob]) }, finish_reason: null,
        }]));
        break;
      case 'finish':
        tokens += event.completionTokens;
        if (event.reason !== 'cancelled') send(chunk([{ index: event.choice, delta: {}, logprobs: null, finish_reason: publicFinish(event.reason) }]));
        break;
      case 'error':
        status = event.error.status;
        send(event.error.toJSON());
        send('[DONE]');
        break;
      case 'prompt':
        break;
      case 'done':
        if (includeUsage) send(chunk([], { usage: usageOf(completion, tokens) }));
        send('[DONE]');
        break;
    }
  }
  recordStreamOutcome(request, status);
  request.log.info({ statusCode: status, streamed: true, tokens }, 'stream completed');
  reply.raw.end();
}
