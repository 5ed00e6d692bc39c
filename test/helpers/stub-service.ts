import { AdapterRegistry } from '../../src/adaptation/adapters.js';
import { ServiceError } from '../../src/errors.js';
import type { CompletionService } from '../../src/service.js';

/** The adapter side of a stub CompletionService: no adapters, no library (the hypernetwork and static modes only), admin actions refused. */
export function noAdapters(modelName: string): Pick<CompletionService, 'adapters' | 'adaptationModes' | 'defaultAdaptation' | 'loadAdapter' | 'adapterFromExamples' | 'chatTemplate'> {
  const refuse = () => Promise.reject(new ServiceError('not_ready', 'stub service'));
  return {
    adapters: new AdapterRegistry(0, { vocabSize: 0, dim: 0, maxRank: 0 }, modelName),
    adaptationModes: ['batch', 'request', 'static', 'none'],
    defaultAdaptation: 'batch',
    loadAdapter: refuse,
    adapterFromExamples: refuse,
    chatTemplate: null,
  };
}

/** A ready service without an engine: enough for every route but a completion that is admitted (it is never answered). */
export function readyStub(modelName: string, overrides: Partial<CompletionService> = {}): CompletionService {
  return {
    ...noAdapters(modelName),
    state: 'ready', failure: null, provider: 'cpu', modelName, contextLength: 256, tokenizer: null, created: 0,
    queueRoom: 16, submit: () => 'queued',
    ...overrides,
  };
}
