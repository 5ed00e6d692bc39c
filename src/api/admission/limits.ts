/**
 * The sizes a completion request is admitted within: how many prompts, how many bytes of body, and which bodies
 * count as large.
 */
import type { Config } from '../../config.js';
import type { CompletionService } from '../../service.js';

/**
 * Bodies larger than this are "large": parsing and checking one costs the event loop milliseconds, so they share a
 * byte budget, and those beyond it are refused with 429 before they are read; a refused one is not drained either.
 */
export const LARGE_BODY_BYTES = 64 * 1024;

/** Room for the JSON around the prompts (field names, the other options) in the body limit. */
const BODY_OVERHEAD_BYTES = 64 * 1024;

export interface PromptLimit {
  /** Most prompts in one request. */
  max: number;
  /** The setting that sets it, named in the refusal. */
  setting: 'MAX_BATCH_SIZE' | 'QUEUE_SIZE';
}

/**
 * A request's prompts share one batch and wait in the queue together, so more than either holds could never be
 * served: a retry would be refused again.
 */
export function promptLimit(config: Pick<Config, 'maxBatchSize' | 'queueSize'>): PromptLimit {
  return config.queueSize < config.maxBatchSize
    ? { max: config.queueSize, setting: 'QUEUE_SIZE' }
    : { max: config.maxBatchSize, setting: 'MAX_BATCH_SIZE' };
}

/**
 * The largest useful body: the most prompts of the most bytes a context can hold, twice over for JSON escapes
 * (\u00e9 for a two-byte character); a larger one is refused unread (413). Without a tokenizer,
 * fastify's default limit applies.
 */
export function bodyLimit(service: Pick<CompletionService, 'tokenizer' | 'contextLength'>, prompts: PromptLimit): number | undefined {
  const tokenizer = service.tokenizer;
  return tokenizer === null ? undefined : 2 * prompts.max * service.contextLength * tokenizer.maxTokenBytes + BODY_OVERHEAD_BYTES;
}
