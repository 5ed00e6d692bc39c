/**
 * POST /v1/chat/completions: the messages rendered with the package's chat template (api/chat/prompt.ts) are one
 * prompt, admitted, batched and adapted as a completion's is; the answer is an assistant message per choice, as JSON or
 * as a stream of chat.completion.chunk events (the role first, then the content, then the finish, then [DONE]).
 * Registered by the completion routes, whose admission hooks and request counter it shares.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import type { Completion } from '../../batching/completion.js';
import type { CompletionService } from '../../service.js';
import { admit, type AdmissionOptions, type RequestFields } from '../admission/admit.js';
import { topLogprobsWithoutLogprobsError } from '../admission/refusals.js';
import { chatPrompt } from '../chat/prompt.js';
import { buildChatResponse, ChatChoiceBuilder, chatLogprobsOf, type ChatDelta } from '../completions/chat-format.js';
import { gather, streamEvents, type StreamShape } from '../completions/event-stream.js';
import type { ResponseHead } from '../completions/format.js';
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
  if (top != null && logprobs !== true) throw topLogprobsWithoutLogprobsError();
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
      const completion = await admit(fields, () => [chatPrompt(body.messages, service.chatTemplate, body.model)], service, request, admission);
      request.log.debug({ messages: body.messages.length, mode: completion.params.mode, user: body.user ?? undefined }, 'chat completion admitted');
      reply.raw.on('close', () => completion.cancel());
      const head: ResponseHead = { id: `chatcmpl-${randomUUID().replaceAll('-', '')}`, created: Math.floor(Date.now() / 1000), model: body.model };
      if (body.stream === true) return streamEvents(request, reply, completion, body.stream_options?.include_usage === true, chatChunks(completion, head));
      return collect(completion, head);
    },
  );
}

async function collect(completion: Completion, head: ResponseHead) {
  const choices = Array.from({ length: completion.rows }, (_, i) => new ChatChoiceBuilder(i, completion.params.sampling.logprobs !== null));
  const { batch, usage } = await gather(completion, choices);
  return buildChatResponse(head, choices.map((c) => c.build()), usage, batch);
}

/** The stream's chat.completion.chunk events: each choice's role first, then its content, then its finish. */
function chatChunks(completion: Completion, head: ResponseHead): StreamShape {
  const chunk = (choices: ChatDelta[], extra: object = {}) => ({ id: head.id, object: 'chat.completion.chunk', created: head.created, model: head.model, choices, ...extra });
  return {
    batched: () => Array.from({ length: completion.rows }, (_, index) => chunk([{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }])),
    prompt: () => [],
    text: (index, content, logprob) => [chunk([{ index, delta: { content }, logprobs: logprob === undefined ? null : { content: chatLogprobsOf([logprob]) }, finish_reason: null }])],
    finish: (index, reason) => [chunk([{ index, delta: {}, logprobs: null, finish_reason: reason }])],
    usage: (usage) => chunk([], { usage }),
  };
}
