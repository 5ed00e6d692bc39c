/**
 * logit_bias and the penalties of a completion request: what the schema cannot check (logit_bias's keys are token
 * ids within the vocabulary; the schema bounds the values and the penalties), and the engine's form of them.
 */
import type { Penalties } from '../../engine/protocol.js';
import type { CompletionRequest } from '../schemas/completions.js';
import { logitBiasKeyError, tokenOutsideVocabularyError } from './refusals.js';

/** A token id as a key: a decimal integer without sign or leading zeros, so that each id has one key only. */
const TOKEN_ID_KEY = /^(0|[1-9][0-9]*)$/;

/** Refuses a logit_bias key that is not a token id of the vocabulary. */
export function checkLogitBias(body: Omit<CompletionRequest, 'prompt'>, vocabSize: number): void {
  for (const key of Object.keys(body.logit_bias ?? {})) {
    if (!TOKEN_ID_KEY.test(key)) throw logitBiasKeyError(key);
    const id = Number(key);
    if (id >= vocabSize) throw tokenOutsideVocabularyError('logit_bias', id, vocabSize, 'logit_bias');
  }
}

/** The request's penalties, or undefined when every one is neutral: its rows then skip them altogether. */
export function requestPenalties(body: Omit<CompletionRequest, 'prompt'>): Penalties | undefined {
  const logitBias = Object.entries(body.logit_bias ?? {}).filter(([, bias]) => bias !== 0).map(([key, bias]): [number, number] => [Number(key), bias]);
  const presencePenalty = body.presence_penalty ?? 0;
  const frequencyPenalty = body.frequency_penalty ?? 0;
  const repetitionPenalty = body.repetition_penalty ?? 1;
  if (logitBias.length === 0 && presencePenalty === 0 && frequencyPenalty === 0 && repetitionPenalty === 1) return undefined;
  return { logitBias, presencePenalty, frequencyPenalty, repetitionPenalty };
}
