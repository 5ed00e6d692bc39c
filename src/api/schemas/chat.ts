/**
 * POST /v1/chat/completions: OpenAI's chat completion request and response. The sampling and adaptation fields are
 * those of /v1/completions (the same names, limits and extensions); what differs is the prompt (messages, rendered
 * with the package's chat template), the logprobs (a flag and top_logprobs) and the answer (a message per choice).
 */
import Type, { type Static } from 'typebox';
import { CompletionRequest, nullable } from './completions.js';

// the completions fields that chat takes as they are: everything but the prompt and what chat spells otherwise
const { prompt: _prompt, echo: _echo, logprobs: _logprobs, suffix: _suffix, best_of: _bestOf, ...shared } = CompletionRequest.properties;

const TextPart = Type.Object(
  { type: Type.Literal('text'), text: Type.String() },
  { additionalProperties: false, description: 'A text part; other kinds (images, audio) are refused: the model reads text only' },
);

const ChatMessage = Type.Object(
  {
    role: Type.Union([Type.Literal('system'), Type.Literal('developer'), Type.Literal('user'), Type.Literal('assistant')], {
      description: 'developer is read as system, as OpenAI does for models without a developer role',
    }),
    content: Type.Union([Type.String(), Type.Array(TextPart, { minItems: 1 })], { description: 'The text, or text parts (joined as one text)' }),
    name: nullable(Type.String({ description: 'Passed to the chat template as the message\'s name' })),
  },
  { $id: 'ChatMessage', additionalProperties: false },
);
export type ChatMessage = Static<typeof ChatMessage>;

export const ChatCompletionRequest = Type.Object(
  {
    ...shared,
    messages: Type.Array(Type.Ref('ChatMessage'), { minItems: 1, description: 'The conversation so far; the answer is the assistant\'s next message' }),
    max_completion_tokens: nullable(Type.Integer({ minimum: 0, description: 'Tokens to generate (default 16); takes precedence over max_tokens' })),
    logprobs: nullable(Type.Boolean({ description: 'Return the log-probability of each token of the answer' })),
    top_logprobs: nullable(Type.Integer({ minimum: 0, maximum: 20, description: 'With logprobs: this many most likely alternatives per token' })),
  },
  { $id: 'ChatCompletionRequest', additionalProperties: false },
);
// a Ref's static type is unknown: the messages are typed by their own schema
export type ChatCompletionRequest = Omit<Static<typeof ChatCompletionRequest>, 'messages'> & { messages: ChatMessage[] };

const TopLogprob = Type.Object({
  token: Type.String(),
  logprob: Type.Number(),
  bytes: Type.Union([Type.Array(Type.Integer()), Type.Null()], { description: 'The token\'s UTF-8 bytes (a token may end inside a character)' }),
});

const ChatLogprobs = Type.Object(
  { content: Type.Union([Type.Array(Type.Object({ ...TopLogprob.properties, top_logprobs: Type.Array(TopLogprob) })), Type.Null()]) },
  { $id: 'ChatLogprobs' },
);
export type ChatLogprobs = Static<typeof ChatLogprobs>;

const FinishReason = Type.Union([Type.Literal('stop'), Type.Literal('length'), Type.Null()]);

const ChatChoice = Type.Object({
  index: Type.Integer(),
  message: Type.Object({ role: Type.Literal('assistant'), content: Type.String() }),
  logprobs: Type.Union([Type.Ref('ChatLogprobs'), Type.Null()]),
  finish_reason: FinishReason,
});

export const ChatCompletionResponse = Type.Object(
  {
    id: Type.String(),
    object: Type.Literal('chat.completion'),
    created: Type.Integer(),
    model: Type.String(),
    choices: Type.Array(ChatChoice),
    usage: Type.Ref('Usage'),
    chameleon: Type.Ref('ChameleonInfo'),
  },
  { $id: 'ChatCompletionResponse' },
);
export type ChatCompletionResponse = Static<typeof ChatCompletionResponse>;
export type ChatCompletionChoice = ChatCompletionResponse['choices'][number];

export const chatSchemas = [ChatMessage, ChatLogprobs, ChatCompletionRequest, ChatCompletionResponse];
