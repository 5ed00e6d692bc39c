/**
 * From a schema-valid request body to a queued Completion: the checks JSON Schema cannot express (unsupported
 * options, the model id, the service's state, the number of prompts, the context window), tokenisation, defaults,
 * and the queue. Everything cheap is checked first (model, options, state, number of prompts, each prompt's size in
 * bytes), so that an oversized request is refused before any BPE work; then, prompt by prompt, a linear-time lower
 * bound of its tokens and the tokenisation itself, off the event loop.
 */
import type { IncomingMessage } from 'node:http';
import { DEFAULT_ADAPTATION_MODE, REQUEST_ADAPTATION_MODES, type RequestAdaptationMode } from '../../adaptation/modes.js';
import { Completion, type GenerationParams, type PromptInput } from '../../batching/completion.js';
import type { TextTokenizer } from '../../model/tokenizer.js';
import type { CompletionService } from '../../service.js';
import type { CompletionRequest } from '../schemas/completions.js';
import type { PromptLimit } from './limits.js';
import {
  adapterWithModeError, adaptationUnavailableError, conflictingModesError, minTokensOverMaxError, completionTooLongError, emptyPromptError, tokenOutsideVocabularyError, modelNotFoundError, noLibraryError,
  promptName, promptTooLongError, queueRefusal, tooManyPromptsError, unavailableError, unsupportedOptionError,
} from './refusals.js';
import { checkLogitBias, requestPenalties } from './penalties.js';

export const DEFAULT_MAX_TOKENS = 16;

/** The fields admission reads besides the prompts: those of /v1/completions, which chat shares. */
export type RequestFields = Omit<CompletionRequest, 'prompt'>;

/**
 * A chat's prompt: the conversation rendered with the chat template, and the text adaptation reads, which is the
 * conversation's own words without the template's (see api/chat/prompt.ts).
 */
export interface ChatPrompt {
  rendered: string;
  adaptationText: string;
}

/** One prompt as the request gives it: a text, token ids, or a chat. */
export type PromptSource = string | readonly number[] | ChatPrompt;

const isTokenIds = (source: PromptSource): source is readonly number[] => Array.isArray(source);

export interface AdmissionOptions {
  prompts: PromptLimit;
  /** Retry-After of a full queue's 429. */
  retryAfterSeconds: number;
  /** The request's prompts are queued: the early refusal stops counting it as arriving (api/admission/arriving.ts). */
  queued: (request: IncomingMessage) => void;
}

/**
 * The request's adaptation: the base model with its `adaptation` mode, or a named adapter chosen by `model` (vLLM's
 * convention), which brings its own low-rank update and so takes no other mode.
 */
function chooseAdaptation(body: RequestFields, service: CompletionService): Pick<GenerationParams, 'mode' | 'adapter'> {
  const served = service.adaptationModes;
  const baseOnly = !served.includes(DEFAULT_ADAPTATION_MODE);
  const byId = modeOfModelId(body.model, service.modelName);
  if (body.model === service.modelName || byId !== null) {
    if (byId !== null && body.adaptation != null && body.adaptation !== byId) throw conflictingModesError(body.model, body.adaptation);
    const mode = byId ?? body.adaptation ?? service.defaultAdaptation;
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

/** The mode a model id `<base>:<mode>` names (for clients that cannot send `adaptation`), else null. */
function modeOfModelId(model: string, base: string): RequestAdaptationMode | null {
  if (!model.startsWith(`${base}:`)) return null;
  const mode = model.slice(base.length + 1);
  return (REQUEST_ADAPTATION_MODES as readonly string[]).includes(mode) ? (mode as RequestAdaptationMode) : null;
}

/** min_tokens within max_tokens, and stop_token_ids within the vocabulary. */
function checkEndings(body: RequestFields, maxTokens: number, vocabSize: number): void {
  if (body.min_tokens != null && body.min_tokens > maxTokens) throw minTokensOverMaxError(body.min_tokens, maxTokens);
  const outside = body.stop_token_ids?.find((id) => id >= vocabSize);
  if (outside !== undefined) throw tokenOutsideVocabularyError('stop_token_ids', outside, vocabSize, 'stop_token_ids');
}

/** Refuses any prompt over the most bytes a context's tokens can hold, before any of them is tokenised. */
function checkPromptBytes(sources: readonly PromptSource[], context: number, tokenizer: TextTokenizer): void {
  const maxBytes = context * tokenizer.maxTokenBytes;
  sources.forEach((source, i) => {
    if (isTokenIds(source)) return;
    const bytes = Buffer.byteLength(typeof source === 'string' ? source : source.rendered);
    if (bytes > maxBytes) {
      throw promptTooLongError(context, promptName(i, sources.length), `${bytes} bytes, more than ${context} tokens can hold (${maxBytes} bytes)`);
    }
  });
}

/** Checks the prompt's tokens (and max_tokens after them) against the context: `lowerBound` for a count bounded from below. */
function checkFits(tokens: number, lowerBound: boolean, context: number, maxTokens: number, prompt: string, bos: string): void {
  if (tokens > context) throw promptTooLongError(context, prompt, `${lowerBound ? 'at least ' : ''}${tokens} tokens${bos}`);
  if (tokens + maxTokens > context) throw completionTooLongError(context, prompt, tokens, maxTokens, lowerBound);
}

async function tokenizePrompts(sources: readonly PromptSource[], tokenizer: TextTokenizer, context: number, maxTokens: number): Promise<PromptInput[]> {
  const bos = tokenizer.addBos ? ' (beginning-of-text token included)' : '';
  const prompts: PromptInput[] = [];
  for (const [i, source] of sources.entries()) {
    const prompt = promptName(i, sources.length);
    if (isTokenIds(source)) {
      prompts.push(tokenIdPrompt(source, prompt, tokenizer, context, maxTokens));
      continue;
    }
    if (typeof source !== 'string') {
      prompts.push(await chatPrompt(source, tokenizer, context, maxTokens));
      continue;
    }
    // The lower bound costs a pass over the text: taken per prompt, so that a request refused at its first
    // prompt pays for that one only.
    checkFits(tokenizer.minPromptTokens(source), true, context, maxTokens, prompt, bos);
    const ids = await tokenizer.tokenizePrompt(source);
    if (ids.length === 0) throw emptyPromptError(prompt);
    checkFits(ids.length, false, context, maxTokens, prompt, bos);
    prompts.push({ text: source, ids, textTokens: tokenizer.textTokenCount(ids) });
  }
  return prompts;
}

/** Token ids are fed as they are (no BOS added, as vLLM does), so every one of them is part of the prompt's text. */
function tokenIdPrompt(ids: readonly number[], prompt: string, tokenizer: TextTokenizer, context: number, maxTokens: number): PromptInput {
  const outside = ids.find((id) => id >= tokenizer.vocabSize);
  if (outside !== undefined) throw tokenOutsideVocabularyError(prompt, outside, tokenizer.vocabSize);
  checkFits(ids.length, false, context, maxTokens, prompt, '');
  return { text: tokenizer.decode(ids), ids: [...ids], textTokens: ids.length };
}

/**
 * The rendered conversation carries its own special tokens, so none is added (as vLLM and transformers tokenize a
 * chat). Adaptation reads the conversation's words alone (PromptInput.adaptation).
 */
async function chatPrompt(chat: ChatPrompt, tokenizer: TextTokenizer, context: number, maxTokens: number): Promise<PromptInput> {
  const prompt = promptName(0, 1);
  checkFits(tokenizer.minPromptTokens(chat.rendered, false), true, context, maxTokens, prompt, '');
  const ids = await tokenizer.tokenize(chat.rendered);
  if (ids.length === 0) throw emptyPromptError(prompt);
  checkFits(ids.length, false, context, maxTokens, prompt, '');
  const words = await tokenizer.tokenize(chat.adaptationText);
  return { text: chat.rendered, ids, textTokens: ids.length, adaptation: { ids: words, tokens: words.length } };
}

/** A completion request's prompts, each a text or token ids. */
export function promptSources(prompt: CompletionRequest['prompt']): PromptSource[] {
  if (typeof prompt === 'string') return [prompt];
  if (prompt.every((p): p is number => typeof p === 'number')) return [prompt];
  return prompt as PromptSource[];
}

function generationParams(body: RequestFields, maxTokens: number, adaptation: Pick<GenerationParams, 'mode' | 'adapter'>): GenerationParams {
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
      minTokens: body.min_tokens ?? 0,
      stopTokenIds: body.stop_token_ids ?? [],
      penalties: requestPenalties(body),
    },
    n: body.n ?? 1,
    echo: body.echo ?? false,
    ...adaptation,
    adaptationScale: body.adaptation_scale ?? 1,
  };
}

/**
 * Admits the request and queues it; throws the refusal (a ServiceError) when it is not taken. Its prompts are taken
 * from `promptsOf` once the model, the options and the service's state have passed, so that a chat's template is
 * rendered only for a request that could be served.
 */
export async function admit(
  body: RequestFields, promptsOf: () => readonly PromptSource[], service: CompletionService, request: { id: string; raw: IncomingMessage }, options: AdmissionOptions,
): Promise<Completion> {
  const adaptation = chooseAdaptation(body, service);
  const unsupported = unsupportedOptionError(body);
  if (unsupported !== null) throw unsupported;
  const unavailable = unavailableError(service.state, service.failure);
  if (unavailable !== null) throw unavailable;
  const tokenizer = service.tokenizer;
  if (tokenizer === null) throw unavailableError('loading', null)!;
  const sources = promptsOf();
  const n = body.n ?? 1;
  if (sources.length * n > options.prompts.max) throw tooManyPromptsError(sources.length, n, options.prompts);
  // MAX_MODEL_LEN: the KV cache's positions per slot, which may be fewer than the model's context
  const context = service.contextLength;
  checkPromptBytes(sources, context, tokenizer);
  const maxTokens = body.max_tokens ?? DEFAULT_MAX_TOKENS;
  checkEndings(body, maxTokens, tokenizer.vocabSize);
  checkLogitBias(body, tokenizer.vocabSize);
  const prompts = await tokenizePrompts(sources, tokenizer, context, maxTokens);
  const completion = new Completion(request.id, prompts, generationParams(body, maxTokens, adaptation));
  const outcome = service.submit(completion);
  if (outcome !== 'queued') throw queueRefusal(outcome, service.state, service.failure, options.retryAfterSeconds);
  options.queued(request.raw);
  return completion;
}
