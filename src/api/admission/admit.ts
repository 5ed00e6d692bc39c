/**
 * From a schema-valid request body to a queued Completion: the checks JSON Schema cannot express (unsupported
 * options, the model id, the service's state, the number of prompts, the context window), tokenisation, defaults,
 * and the queue. Everything cheap is checked first (model, options, state, number of prompts, each prompt's size in
 * bytes), so that an oversized request is refused before any BPE work; then, prompt by prompt, a linear-time lower
 * bound of its tokens and the tokenisation itself, off the event loop.
 */
import { DEFAULT_ADAPTATION_MODE } from '../../adaptation/modes.js';
import { Completion, type GenerationParams, type PromptInput } from '../../batching/completion.js';
import type { TextTokenizer } from '../../model/tokenizer.js';
import type { CompletionService } from '../../service.js';
import type { CompletionRequest } from '../schemas/completions.js';
import type { PromptLimit } from './limits.js';
import {
  adapterWithModeError, adaptationUnavailableError, completionTooLongError, emptyPromptError, modelNotFoundError, noLibraryError,
  promptName, promptTooLongError, queueRefusal, tooManyPromptsError, unavailableError, unsupportedOptionError,
} from './refusals.js';

export const DEFAULT_MAX_TOKENS = 16;

export interface AdmissionOptions {
  prompts: PromptLimit;
  /** Retry-After of a full queue's 429. */
  retryAfterSeconds: number;
}

/**
 * The request's adaptation: the base model with its `adaptation` mode, or a named adapter chosen by `model` (vLLM's
 * convention), which brings its own low-rank update and so takes no other mode.
 */
function chooseAdaptation(body: CompletionRequest, service: CompletionService): Pick<GenerationParams, 'mode' | 'adapter'> {
  const served = service.adaptationModes;
  const baseOnly = !served.includes(DEFAULT_ADAPTATION_MODE);
  if (body.model === service.modelName) {
    // a base-only package serves the base model alone, so that is what a request that names no mode gets
    const mode = body.adaptation ?? (baseOnly ? 'none' : DEFAULT_ADAPTATION_MODE);
    if (!served.includes(mode)) throw adaptationUnavailableError(mode, baseOnly);
    return { mode };
  }
  const named = service.adapters.get(body.model);
  if (named === undefined) {
    if (baseOnly && body.model.startsWith('library:')) throw noLibraryError(body.model);
    throw modelNotFoundError(body.model, service.modelName, service.adapters.list().map((a) => a.id));
  }
  if (body.adaptation != null) throw adapterWithModeError(body.model, service.modelName);
  return { mode: 'adapter', adapter: { id: named.id, factors: named.factors } };
}

/** Refuses any prompt over the most bytes a context's tokens can hold, before any of them is tokenised. */
function checkPromptBytes(texts: readonly string[], context: number, tokenizer: TextTokenizer): void {
  const maxBytes = context * tokenizer.maxTokenBytes;
  texts.forEach((text, i) => {
    const bytes = Buffer.byteLength(text);
    if (bytes > maxBytes) {
      throw promptTooLongError(context, promptName(i, texts.length), `${bytes} bytes, more than ${context} tokens can hold (${maxBytes} bytes)`);
    }
  });
}

/** Checks the prompt's tokens (and max_tokens after them) against the context: `lowerBound` for a count bounded from below. */
function checkFits(tokens: number, lowerBound: boolean, context: number, maxTokens: number, prompt: string, bos: string): void {
  if (tokens > context) throw promptTooLongError(context, prompt, `${lowerBound ? 'at least ' : ''}${tokens} tokens${bos}`);
  if (tokens + maxTokens > context) throw completionTooLongError(context, prompt, tokens, maxTokens, lowerBound);
}

async function tokenizePrompts(texts: readonly string[], tokenizer: TextTokenizer, context: number, maxTokens: number): Promise<PromptInput[]> {
  const bos = tokenizer.addBos ? ' (beginning-of-text token included)' : '';
  const prompts: PromptInput[] = [];
  for (const [i, text] of texts.entries()) {
    const prompt = promptName(i, texts.length);
    // The lower bound costs a pass over the text: taken per prompt, so that a request refused at its first
    // prompt pays for that one only.
    checkFits(tokenizer.minPromptTokens(text), true, context, maxTokens, prompt, bos);
    const ids = await tokenizer.tokenizePrompt(text);
    if (ids.length === 0) throw emptyPromptError(prompt);
    checkFits(ids.length, false, context, maxTokens, prompt, bos);
    prompts.push({ text, ids, textTokens: tokenizer.textTokenCount(ids) });
  }
  return prompts;
}

function generationParams(body: CompletionRequest, maxTokens: number, adaptation: Pick<GenerationParams, 'mode' | 'adapter'>): GenerationParams {
  const stop = body.stop == null ? [] : (typeof body.stop === 'string' ? [body.stop] : body.stop).filter((s) => s !== '');
  return {
    sampling: {
      maxTokens,
      temperature: body.temperature ?? 1,
      topP: body.top_p ?? 1,
      topK: body.top_k ?? 0,
      seed: body.seed ?? null,
      stop,
      logprobs: body.logprobs ?? null,
      ignoreEos: body.ignore_eos ?? false,
    },
    echo: body.echo ?? false,
    ...adaptation,
    adaptationScale: body.adaptation_scale ?? 1,
  };
}

/** Admits the request and queues it; throws the refusal (a ServiceError) when it is not taken. */
export async function admit(body: CompletionRequest, service: CompletionService, requestId: string, options: AdmissionOptions): Promise<Completion> {
  const adaptation = chooseAdaptation(body, service);
  const unsupported = unsupportedOptionError(body);
  if (unsupported !== null) throw unsupported;
  const unavailable = unavailableError(service.state, service.failure);
  if (unavailable !== null) throw unavailable;
  const tokenizer = service.tokenizer;
  if (tokenizer === null) throw unavailableError('loading', null)!;
  const texts = typeof body.prompt === 'string' ? [body.prompt] : body.prompt;
  if (texts.length > options.prompts.max) throw tooManyPromptsError(texts.length, options.prompts);
  // MAX_MODEL_LEN: the KV cache's positions per slot, which may be fewer than the model's context
  const context = service.contextLength;
  checkPromptBytes(texts, context, tokenizer);
  const maxTokens = body.max_tokens ?? DEFAULT_MAX_TOKENS;
  const prompts = await tokenizePrompts(texts, tokenizer, context, maxTokens);
  const completion = new Completion(requestId, prompts, generationParams(body, maxTokens, adaptation));
  const outcome = service.submit(completion);
  if (outcome !== 'queued') throw queueRefusal(outcome, service.state, service.failure, options.retryAfterSeconds);
  return completion;
}
