/**
 * Every refusal a completion request can get before it is queued, each written once: the routes, the hooks, the
 * refusal sent before fastify (api/fast-refusal.ts), the readiness probe and the service all take them from here,
 * so that one refusal reads the same wherever it is decided.
 */
import { MODES, PART_NAMES, type RequestAdaptationMode } from '../../adaptation/modes.js';
import type { QueueOutcome } from '../../batching/queue.js';
import { ServiceError } from '../../errors.js';
import { ADAPT_COMMAND } from '../../model/manifest.js';
import type { ServiceState } from '../../service.js';
import type { CompletionRequest } from '../schemas/completions.js';
import { LARGE_BODY_BYTES, type PromptLimit } from './limits.js';

/** The 503 that a service in `state` answers new work with, or null when it takes work: one mapping for every route. */
export function unavailableError(state: ServiceState, failure: Error | null): ServiceError | null {
  switch (state) {
    case 'ready':
      return null;
    case 'loading':
      return new ServiceError('not_ready', 'The model is still loading; retry shortly.', { retryAfterSeconds: 1 });
    case 'failed':
      return new ServiceError('not_ready', `The model failed to load: ${failure?.message ?? 'unknown error'}`, { retryAfterSeconds: 1 });
    case 'draining':
    case 'closed':
      return new ServiceError('shutting_down', 'The server is shutting down and accepts no new requests.');
  }
}

export function queueFullError(retryAfterSeconds: number): ServiceError {
  return new ServiceError('queue_full', 'The request queue is full; retry later.', { retryAfterSeconds });
}

/** The large bodies' byte budget is spent (api/admission/before-body.ts). */
export function largeBodiesError(retryAfterSeconds: number): ServiceError {
  return new ServiceError('queue_full', `Too many large requests (over ${LARGE_BODY_BYTES} bytes) per second; retry later.`, { retryAfterSeconds });
}

/**
 * What a client gets when the queue did not take its admitted request. A queue closes only when the service stops,
 * so a 'closed' one from a service that still says ready is a drain that has just begun.
 */
export function queueRefusal(outcome: Exclude<QueueOutcome, 'queued'>, state: ServiceState, failure: Error | null, retryAfterSeconds: number): ServiceError {
  if (outcome === 'full') return queueFullError(retryAfterSeconds);
  return unavailableError(state === 'ready' ? 'draining' : state, failure)!;
}

/** More choices (prompts times n) than one request may bring: a 400, since retrying never makes room for them. */
export function tooManyPromptsError(prompts: number, n: number, limit: PromptLimit): ServiceError {
  if (n === 1) return new ServiceError('invalid_request', `At most ${limit.max} prompts per request (${limit.setting}); got ${prompts}.`, { param: 'prompt' });
  return new ServiceError('invalid_request',
    `At most ${limit.max} choices per request (${limit.setting}): each of the ${prompts} prompt(s) times n = ${n} is ${prompts * n}.`, { param: 'n' });
}

/** "the prompt", or "prompt 3" in a request of several. */
export function promptName(index: number, count: number): string {
  return count > 1 ? `prompt ${index}` : 'the prompt';
}

/** A prompt that alone does not fit the context; `size` is what was measured ("312 tokens", "at least 300 tokens"). */
export function promptTooLongError(context: number, prompt: string, size: string): ServiceError {
  return new ServiceError('context_length_exceeded', `This model's maximum context length is ${context} tokens, however ${prompt} has ${size}.`, { param: 'prompt' });
}

/** A prompt that fits, but not with max_tokens after it; `lowerBound` when its token count is only bounded from below. */
export function completionTooLongError(context: number, prompt: string, promptTokens: number, maxTokens: number, lowerBound: boolean): ServiceError {
  const [atLeast, orMore] = lowerBound ? ['at least ', ' or more'] : ['', ''];
  return new ServiceError('context_length_exceeded',
    `This model's maximum context length is ${context} tokens, however you requested ${atLeast}${promptTokens + maxTokens} tokens (${promptTokens}${orMore} in ${prompt}, ${maxTokens} for the completion). Reduce max_tokens or the prompt.`,
    { param: 'max_tokens' });
}

/** Token ids (a prompt's, in field `param`) with an id the vocabulary does not have. */
export function tokenOutsideVocabularyError(where: string, id: number, vocabSize: number, param = 'prompt'): ServiceError {
  return new ServiceError('invalid_request', `Token id ${id} in ${where} is outside the vocabulary (0 to ${vocabSize - 1}).`, { param });
}

/** A logit_bias key that is not a token id. */
export function logitBiasKeyError(key: string): ServiceError {
  return new ServiceError('invalid_request', `logit_bias key ${JSON.stringify(key)} is not a token id (a decimal integer such as "50256").`, { param: 'logit_bias' });
}

export function topLogprobsWithoutLogprobsError(): ServiceError {
  return new ServiceError('invalid_request', 'top_logprobs needs logprobs: true.', { param: 'top_logprobs' });
}

export function minTokensOverMaxError(minTokens: number, maxTokens: number): ServiceError {
  return new ServiceError('invalid_request', `min_tokens (${minTokens}) is more than max_tokens (${maxTokens}).`, { param: 'min_tokens' });
}

export function emptyPromptError(prompt: string): ServiceError {
  return new ServiceError('invalid_request', `${prompt} is empty; this model needs at least one token.`, { param: 'prompt' });
}

/** A body field the service does not know: refused rather than ignored, so a client never gets what it did not ask for. */
export function unknownFieldError(field: string): ServiceError {
  return unsupported(field, `${field} is not a field this server implements (see /docs for the fields it takes).`);
}

function unsupported(param: string, message: string): ServiceError {
  return new ServiceError('unsupported_parameter', message, { param });
}

/** The refusal of the first option the service does not implement that is set to anything but its neutral value. */
export function unsupportedOptionError(body: Omit<CompletionRequest, 'prompt'>): ServiceError | null {
  if (body.best_of != null && body.best_of !== 1) return unsupported('best_of', `best_of must be 1 (got ${body.best_of}).`);
  if (body.suffix != null && body.suffix !== '') return unsupported('suffix', 'suffix is not supported.');
  if (body.response_format != null && body.response_format.type !== 'text') {
    return unsupported('response_format', `response_format ${body.response_format.type} is not supported: this server does not constrain its output (only text).`);
  }
  return null;
}

/** The refusal of an adaptation the package cannot give: a base-only package names the command that adds it. */
export function baseOnlyRefusal(what: string): string {
  return `This model package is base-only (it has no hypernetwork and no static LoRA), so ${what}: it serves adaptation 'none' (the base model) and named adapters loaded from files. ` +
    `\`${ADAPT_COMMAND}\` adds the adaptation parts to the package (with --baselines also the LoRA library and LoRA*Mask); then restart the server on it.`;
}

/** An `adaptation` mode the package does not serve. */
export function adaptationUnavailableError(mode: RequestAdaptationMode, baseOnly: boolean): ServiceError {
  const what = `adaptation '${mode}' is not available`;
  const needs = MODES[mode].needs;
  return unsupported('adaptation', baseOnly || needs === null
    ? baseOnlyRefusal(what)
    : `This model package has no ${PART_NAMES[needs]}, so ${what}.`);
}

/** An adapter made from examples asked of a base-only package, which has no hypernetwork. */
export function examplesNeedHypernetworkError(): ServiceError {
  return new ServiceError('invalid_request', baseOnlyRefusal('it cannot make an adapter from examples (that needs the hypernetwork)'), { param: 'examples' });
}

/** A library adapter asked of a base-only package, which has no library. */
export function noLibraryError(model: string): ServiceError {
  return unsupported('model', baseOnlyRefusal(`it has no LoRA library and no adapter '${model}'`));
}

/** A model id that names one mode, and an `adaptation` field that names another. */
export function conflictingModesError(model: string, adaptation: string): ServiceError {
  return unsupported('adaptation', `The model '${model}' names its adaptation mode; adaptation '${adaptation}' contradicts it (leave adaptation out).`);
}

/** A named adapter with an `adaptation` mode: the adapter is the adaptation. */
export function adapterWithModeError(adapter: string, baseModel: string): ServiceError {
  return unsupported('adaptation',
    `'${adapter}' is a named adapter: it brings its own low-rank update, so adaptation must be left out (use model '${baseModel}' for the adaptation modes).`);
}

/** A model that is neither the base model nor a named adapter, in a request body or a path. */
export function modelNotFoundError(model: string, baseModel: string, adapters: readonly string[]): ServiceError {
  const served = adapters.length > 0 ? ` and the adapters ${adapters.map((a) => `'${a}'`).join(', ')}` : '';
  return new ServiceError('model_not_found', `The model '${model}' does not exist; this server serves '${baseModel}'${served} (GET /v1/models).`, { param: 'model' });
}

/** A chat request to a package without a chat template: refused as vLLM does, never rendered with a guessed one. */
export function noChatTemplateError(model: string): ServiceError {
  return new ServiceError('invalid_request',
    `The model '${model}' has no chat template, so it serves /v1/completions only. A package imported from a checkpoint whose tokenizer_config.json ` +
    '(or chat_template.jinja) has one keeps it (manifest tokenizer.chat_template).', { param: 'messages' });
}

/** The chat template refused the conversation (its raise_exception), or cannot be rendered. */
export function chatTemplateRefusal(reason: string): ServiceError {
  return new ServiceError('invalid_request', `The chat template cannot render these messages: ${reason}`, { param: 'messages' });
}
