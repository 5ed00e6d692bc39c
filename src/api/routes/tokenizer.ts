/**
 * POST /tokenize, POST /detokenize, GET /tokenizer_info: the served model's tokenizer, in vLLM's shapes. A text is
 * tokenized as a completion prompt is (off the event loop), and messages as a chat completion feeds them, so `count` is
 * what that prompt costs.
 */
import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import type { TextTokenizer } from '../../model/tokenizer.js';
import type { CompletionService } from '../../service.js';
import { ServiceError } from '../../errors.js';
import { chatPrompt } from '../chat/prompt.js';
import { modelNotFoundError, tokenOutsideVocabularyError, unavailableError } from '../admission/refusals.js';
import { errorResponses } from '../schemas/common.js';
import type { DetokenizeRequest, TokenizeRequest } from '../schemas/tokenizer.js';

/**
 * A prompt's ids (BOS as a completion prompt gets it, unless add_special_tokens is false), or a conversation's as chat
 * completions feed it (rendered by the template, nothing added unless add_special_tokens is true).
 */
async function tokensOf(body: TokenizeRequest, tokenizer: TextTokenizer, service: CompletionService): Promise<number[]> {
  if ((body.prompt === undefined) === (body.messages === undefined)) {
    throw new ServiceError('invalid_request', 'Send either prompt (a text) or messages (a conversation).', { param: body.prompt === undefined ? 'prompt' : 'messages' });
  }
  if (body.messages !== undefined) {
    const { rendered } = chatPrompt(body.messages, service.chatTemplate, body.model ?? service.modelName, body.add_generation_prompt ?? true);
    return body.add_special_tokens === true ? tokenizer.tokenizePrompt(rendered) : tokenizer.tokenize(rendered);
  }
  return body.add_special_tokens === false ? tokenizer.tokenize(body.prompt!) : tokenizer.tokenizePrompt(body.prompt!);
}

const json = (ref: string) => ({ description: 'OK', content: { 'application/json': { schema: Type.Ref(ref) } } });

export async function tokenizerRoutes(app: FastifyInstance, options: { service: CompletionService }): Promise<void> {
  const { service } = options;
  /** The tokenizer, once the model names a served one (the base model and its adapters share it). */
  const tokenizerFor = (model: string | undefined): TextTokenizer => {
    if (model !== undefined && model !== service.modelName && service.adapters.get(model) === undefined) {
      throw modelNotFoundError(model, service.modelName, service.adapters.list().map((a) => a.id));
    }
    if (service.tokenizer === null) throw unavailableError('loading', null)!;
    return service.tokenizer;
  };

  app.post('/tokenize', {
    schema: { summary: 'Tokenize a text as a prompt is tokenized, or messages as a chat is (vLLM)', tags: ['tokenizer'], body: Type.Ref('TokenizeRequest'), response: { 200: json('TokenizeResponse'), ...errorResponses(400, 404, 503) } },
  }, async (request) => {
    const body = request.body as TokenizeRequest;
    const tokenizer = tokenizerFor(body.model);
    const tokens = await tokensOf(body, tokenizer, service);
    return {
      count: tokens.length, max_model_len: service.contextLength, tokens,
      token_strs: body.return_token_strs === true ? tokens.map((id) => tokenizer.piece(id)) : null,
    };
  });

  app.post('/detokenize', {
    schema: { summary: 'The text of token ids (vLLM)', tags: ['tokenizer'], body: Type.Ref('DetokenizeRequest'), response: { 200: json('DetokenizeResponse'), ...errorResponses(400, 404, 503) } },
  }, async (request) => {
    const body = request.body as DetokenizeRequest;
    const tokenizer = tokenizerFor(body.model);
    const outside = body.tokens.find((id) => id >= tokenizer.vocabSize);
    if (outside !== undefined) throw tokenOutsideVocabularyError('tokens', outside, tokenizer.vocabSize, 'tokens');
    return { prompt: tokenizer.decode(body.tokens) };
  });

  app.get('/tokenizer_info', {
    schema: { summary: 'The tokenizer\'s special tokens and limits (vLLM)', tags: ['tokenizer'], response: { 200: json('TokenizerInfo'), ...errorResponses(503) } },
  }, async () => {
    const tokenizer = tokenizerFor(undefined);
    return {
      tokenizer_class: tokenizer.kind, model_max_length: service.contextLength, vocab_size: tokenizer.vocabSize,
      bos_token: tokenizer.bosId === null ? null : tokenizer.piece(tokenizer.bosId), bos_token_id: tokenizer.bosId, add_bos_token: tokenizer.addBos,
      eos_token: tokenizer.piece(tokenizer.eosId), eos_token_id: tokenizer.eosId, eos_token_ids: [...tokenizer.eosIds],
    };
  });
}
