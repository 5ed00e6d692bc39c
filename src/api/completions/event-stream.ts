/**
 * The two ways a completion request's events reach its client, shared by /v1/completions and /v1/chat/completions:
 * gathered into one response, or streamed as server-sent events. Each route gives only its shapes (its choice
 * builders, its chunks); the order of events, the usage, the errors and the end are handled here once.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { BatchInfo, Completion } from '../../batching/completion.js';
import type { FinishReason, TokenLogprob } from '../../engine/protocol.js';
import { ServiceError } from '../../errors.js';
import type { ChameleonInfo, Usage } from '../schemas/completions.js';
import { chameleonInfo, usageOf } from './format.js';

const outcomes = new WeakMap<FastifyRequest, number>();

/** The status a stream ended with (sent as 200 before its outcome was known), or undefined for a request that was not streamed. */
export function streamOutcome(request: FastifyRequest): number | undefined {
  return outcomes.get(request);
}

/** One choice of a non-streamed response, as its events arrive. */
export interface ChoiceAccumulator {
  append(text: string, logprob?: TokenLogprob): void;
  finished(reason: FinishReason, tokens: number): void;
  promptLogprobs(entries: readonly TokenLogprob[]): void;
  readonly tokens: number;
}

/** Feeds a non-streamed request's events to its choices; returns its batch and usage, or throws its error. */
export async function gather(completion: Completion, choices: readonly ChoiceAccumulator[]): Promise<{ batch: BatchInfo; usage: Usage }> {
  let batch: BatchInfo | null = null;
  for await (const event of completion.events()) {
    switch (event.type) {
      case 'batched':
        batch = event.batch;
        break;
      case 'prompt':
        choices[event.choice].promptLogprobs(event.logprobs);
        break;
      case 'text':
        choices[event.choice].append(event.text, event.logprob);
        break;
      case 'finish':
        choices[event.choice].finished(event.reason, event.completionTokens);
        break;
      case 'error':
        throw event.error;
      case 'done':
        break;
    }
  }
  if (batch === null) throw new ServiceError('internal_error', 'The request ended without being batched.');
  return { batch, usage: usageOf(completion, choices.reduce((sum, c) => sum + c.tokens, 0)) };
}

/** A route's chunks: each returns the chunks (without the chameleon object, which is added) to send for one event. */
export interface StreamShape {
  batched(): unknown[];
  prompt(choice: number, logprobs: TokenLogprob[]): unknown[];
  text(choice: number, text: string, logprob: TokenLogprob | undefined): unknown[];
  finish(choice: number, reason: 'stop' | 'length'): unknown[];
  usage(usage: Usage): unknown;
}

/** Takes the response from fastify and streams the request's events as the route's chunks, then `data: [DONE]`. */
export async function streamEvents(request: FastifyRequest, reply: FastifyReply, completion: Completion, includeUsage: boolean, shape: StreamShape): Promise<void> {
  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-request-id': request.id,
  });
  const write = (data: unknown) => {
    if (!raw.destroyed) raw.write(`data: ${data === '[DONE]' ? data : JSON.stringify(data)}\n\n`);
  };
  let chameleon: ChameleonInfo | null = null;
  const send = (chunks: unknown[]) => {
    for (const chunk of chunks) write(chameleon === null ? chunk : { ...(chunk as object), chameleon });
  };
  let tokens = 0;
  let status = 200;
  for await (const event of completion.events()) {
    switch (event.type) {
      case 'batched':
        chameleon = chameleonInfo(event.batch);
        send(shape.batched());
        break;
      case 'prompt':
        send(shape.prompt(event.choice, event.logprobs));
        break;
      case 'text':
        send(shape.text(event.choice, event.text, event.logprob));
        break;
      case 'finish':
        tokens += event.completionTokens;
        if (event.reason !== 'cancelled') send(shape.finish(event.choice, event.reason));
        break;
      case 'error':
        // As vLLM does: the error as one more event, then the usual end, so that clients stop cleanly.
        status = event.error.status;
        write(event.error.toJSON());
        write('[DONE]');
        break;
      case 'done':
        if (includeUsage) send([shape.usage(usageOf(completion, tokens))]);
        write('[DONE]');
        break;
    }
  }
  outcomes.set(request, status);
  request.log.info({ statusCode: status, streamed: true, tokens }, 'stream completed');
  raw.end();
}
