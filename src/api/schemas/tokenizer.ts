/**
 * vLLM's tokenizer routes (POST /tokenize, POST /detokenize, GET /tokenizer_info), as lm-evaluation-harness and other
 * clients call them to count and split text with the served model's own tokenizer.
 */
import Type, { type Static } from 'typebox';
import type { ChatMessage } from './chat.js';

const model = Type.Optional(Type.String({ description: 'The base model or one of its named adapters (they share its tokenizer); default the base model' }));

export const TokenizeRequest = Type.Object(
  {
    model,
    prompt: Type.Optional(Type.String({ description: 'The text to tokenize (or messages)' })),
    messages: Type.Optional(Type.Array(Type.Ref('ChatMessage'), { minItems: 1, description: 'A conversation to tokenize as /v1/chat/completions feeds it: rendered with the chat template (or prompt)' })),
    add_generation_prompt: Type.Optional(Type.Boolean({ description: 'With messages: open the assistant\'s turn, as chat completions do; default true' })),
    add_special_tokens: Type.Optional(Type.Boolean({
      description: 'Add the special tokens a prompt gets (the beginning-of-text token, when the package adds one); default true for a prompt, false for messages (the template writes its own)',
    })),
    return_token_strs: Type.Optional(Type.Boolean({ description: 'Also return each token\'s text, as logprobs write it; default false' })),
  },
  { $id: 'TokenizeRequest', additionalProperties: false },
);
// a Ref's static type is unknown: the messages are typed by their own schema
export type TokenizeRequest = Omit<Static<typeof TokenizeRequest>, 'messages'> & { messages?: ChatMessage[] };

export const TokenizeResponse = Type.Object(
  {
    count: Type.Integer(),
    max_model_len: Type.Integer({ description: 'The longest prompt + completion served, in tokens (MAX_MODEL_LEN)' }),
    tokens: Type.Array(Type.Integer()),
    token_strs: Type.Union([Type.Array(Type.String()), Type.Null()]),
  },
  { $id: 'TokenizeResponse' },
);

export const DetokenizeRequest = Type.Object(
  { model, tokens: Type.Array(Type.Integer({ minimum: 0 }), { description: 'Token ids; special tokens are left out of the text' }) },
  { $id: 'DetokenizeRequest', additionalProperties: false },
);
export type DetokenizeRequest = Static<typeof DetokenizeRequest>;

export const DetokenizeResponse = Type.Object({ prompt: Type.String() }, { $id: 'DetokenizeResponse' });

export const TokenizerInfo = Type.Object(
  {
    tokenizer_class: Type.String({ description: 'The tokenizer\'s kind: byte_level (GPT-2 style BPE) or sentencepiece (Llama style BPE)' }),
    model_max_length: Type.Integer({ description: 'MAX_MODEL_LEN' }),
    vocab_size: Type.Integer(),
    bos_token: Type.Union([Type.String(), Type.Null()]),
    bos_token_id: Type.Union([Type.Integer(), Type.Null()]),
    add_bos_token: Type.Boolean({ description: 'Whether a text prompt gets the beginning-of-text token' }),
    eos_token: Type.String(),
    eos_token_id: Type.Integer(),
    eos_token_ids: Type.Array(Type.Integer(), { description: 'Every id that ends generation' }),
  },
  { $id: 'TokenizerInfo' },
);

export const tokenizerSchemas = [TokenizeRequest, TokenizeResponse, DetokenizeRequest, DetokenizeResponse, TokenizerInfo];
