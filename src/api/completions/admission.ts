/**
 * From a schema-valid request body to an admitted Completion: the checks JSON Schema cannot express
 * (unsupported options, the model id, the context window), tokenisation, and defaults.
 */
import { DEFAULT_ADAPTATION_MODE, MODES, PART_NAMES } from '../../adaptation/modes.js';
import { Completion, type GenerationParams, type PromptInput } from '../../batching/completion.js';
import { ServiceError } from '../../errors.js';
import { baseOnlyRefusal, unavailableError, type CompletionService } from '../../service.js';
import type { CompletionRequest } from '../schemas/completions.js';

export const DEFAULT_MAX_TOKENS = 16;

function refuse(param: string, message: string): never {
  throw new ServiceError('unsupported_parameter', message, { param });
}

/** Options the service does not implement are refused when set to anything but their neutral value. */
function checkUnsupported(body: CompletionRequest): void {
  if (body.n != null && body.n !== 1) refuse('n', `n must be 1: this server returns one choice per prompt (got ${body.n}). Send an array of prompts for several choices.`);
  if (body.best_of != null && body.best_of !== 1) refuse('best_of', `best_of must be 1 (got ${body.best_of}).`);
  if (body.suffix != null && body.suffix !== '') refuse('suffix', 'suffix is not supported.');
  if (body.presence_penalty != null && body.presence_penalty !== 0) refuse('presence_penalty', 'presence_penalty is not supported (must be 0).');
  if (body.frequency_penalty != null && body.frequency_penalty !== 0) refuse('frequency_penalty', 'frequency_penalty is not supported (must be 0).');
  if (body.logit_bias != null && Object.keys(body.logit_bias).length > 0) refuse('logit_bias', 'logit_bias is not supported.');
}

export interface AdmissionLimits {
  /** Most prompts in one request (MAX_BATCH_SIZE: more could never share a batch). */
  maxPrompts: number;
}

/**
 * Checks everything that is cheap first (model, options, state, number of prompts, each prompt's size in
 * bytes), so that an oversized request is refused before any BPE work; then, prompt by prompt, a linear-time
 * lower bound of its tokens and the tokenisation itself, off the event loop.
 */
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
    if (!served.includes(mode)) {
      if (baseOnly) refuse('adaptation', baseOnlyRefusal(`adaptation '${mode}' is not available`));
      refuse('adaptation', `This model package has no ${PART_NAMES[MODES[mode].needs!]}, so adaptation '${mode}' is not available.`);
    }
    return { mode };
  }
  const named = service.adapters.get(body.model);
  if (named === undefined) {
    if (baseOnly && body.model.startsWith('library:')) {
      refuse('model', baseOnlyRefusal(`it has no LoRA library and no adapter '${body.model}'`));
    }
    const adapters = service.adapters.list().map((a) => a.id);
    throw new ServiceError('model_not_found',
      `The model '${body.model}' does not exist; this server serves '${service.modelName}'${adapters.length > 0 ? ` and the adapters ${adapters.map((a) => `'${a}'`).join(', ')}` : ''} (GET /v1/models).`,
      { param: 'model' });
  }
  if (body.adaptation != null) {
    refuse('adaptation', `'${body.model}' is a named adapter: it brings its own low-rank update, so adaptation must be left out (use model '${service.modelName}' for the adaptation modes).`);
  }
  return { mode: 'adapter', adapter: { id: named.id, factors: named.factors } };
}

export async function admit(body: CompletionRequest, service: CompletionService, requestId: string, limits: AdmissionLimits): Promise<Completion> {
  const adaptation = chooseAdaptation(body, service);
  checkUnsupported(body);
  const unavailable = unavailableError(service.state, service.failure);
  if (unavailable !== null) throw unavailable;
  const tokenizer = service.tokenizer;
  if (tokenizer === null) throw unavailableError('loading', null)!;
  const maxTokens = body.max_tokens ?? DEFAULT_MAX_TOKENS;
  // MAX_MODEL_LEN: the KV cache's positions per slot, which may be fewer than the model's context
  const context = service.contextLength;
  const texts = typeof body.prompt === 'string' ? [body.prompt] : body.prompt;
  if (texts.length > limits.maxPrompts) {
    throw new ServiceError('invalid_request', `At most ${limits.maxPrompts} prompts per request (MAX_BATCH_SIZE); got ${texts.length}.`, { param: 'prompt' });
  }
  const where = (i: number) => (texts.length > 1 ? `prompt ${i}` : 'the prompt');
  const bos = tokenizer.addBos ? ' (beginning-of-text token included)' : '';
  const maxBytes = context * tokenizer.maxTokenBytes;
  texts.forEach((text, i) => {
    const bytes = Buffer.byteLength(text);
    if (bytes > maxBytes) {
      throw new ServiceError('context_length_exceeded',
        `This model's maximum context length is ${context} tokens, however ${where(i)} has ${bytes} bytes, more than ${context} tokens can hold (${maxBytes} bytes).`,
        { param: 'prompt' });
    }
  });
  const prompts: PromptInput[] = [];
  for (const [i, text] of texts.entries()) {
    // The lower bound costs a pass over the text: taken per prompt, so that a request refused at its first
    // prompt pays for that one only.
    const least = tokenizer.minPromptTokens(text);
    if (least > context) {
      throw new ServiceError('context_length_exceeded',
        `This model's maximum context length is ${context} tokens, however ${where(i)} has at least ${least} tokens${bos}.`, { param: 'prompt' });
    }
    if (least + maxTokens > context) {
      throw new ServiceError('context_length_exceeded',
        `This model's maximum context length is ${context} tokens, however you requested at least ${least + maxTokens} tokens (${least} or more in ${where(i)}, ${maxTokens} for the completion). Reduce max_tokens or the prompt.`,
        { param: 'max_tokens' });
    }
    const ids = await tokenizer.tokenizePrompt(text);
    const textTokens = tokenizer.textTokenCount(ids);
    if (ids.length === 0) {
      throw new ServiceError('invalid_request', `${where(i)} is empty; this model needs at least one token.`, { param: 'prompt' });
    }
    if (ids.length > context) {
      throw new ServiceError('context_length_exceeded',
        `This model's maximum context length is ${context} tokens, however ${where(i)} has ${ids.length} tokens${bos}.`,
        { param: 'prompt' });
    }
    if (ids.length + maxTokens > context) {
      throw new ServiceError('context_length_exceeded',
        `This model's maximum context length is ${context} tokens, however you requested ${ids.length + maxTokens} tokens (${ids.length} in ${where(i)}, ${maxTokens} for the completion). Reduce max_tokens or the prompt.`,
        { param: 'max_tokens' });
    }
    prompts.push({ text, ids, textTokens });
  }
  const stop = body.stop == null ? [] : (typeof body.stop === 'string' ? [body.stop] : body.stop).filter((s) => s !== '');
  const params: GenerationParams = {
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
  return new Completion(requestId, prompts, params);
}
