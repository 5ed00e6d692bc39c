/**
 * Builds OpenAI-shaped chat completion objects from a request's pipeline events: the whole response (JSON), or one
 * chunk at a time (SSE). The text, finish reasons and usage are those of completions (format.ts); a chat's answer is an
 * assistant message and its logprobs are in the chat shape (a list of tokens, each with its bytes and alternatives).
 */
import type { BatchInfo } from '../../batching/completion.js';
import type { TokenLogprob } from '../../engine/protocol.js';
import { pieceBytes } from '../../model/tokenizer.js';
import type { ChatCompletionChoice, ChatCompletionResponse, ChatLogprobs } from '../schemas/chat.js';
import type { Usage } from '../schemas/completions.js';
import { chameleonInfo, GeneratedText, type ResponseHead } from './format.js';

/** OpenAI's floor for a log-probability too small to write. */
const LOGPROB_FLOOR = -9999;

const bytesOf = (token: string) => Array.from(pieceBytes(token));

/** Logprobs of generated tokens in the chat shape. */
export function chatLogprobsOf(entries: readonly TokenLogprob[]): NonNullable<ChatLogprobs['content']> {
  return entries.map((e) => ({
    token: e.token,
    logprob: e.logprob ?? LOGPROB_FLOOR,
    bytes: bytesOf(e.token),
    top_logprobs: (e.top ?? []).map(([token, logprob]) => ({ token, logprob, bytes: bytesOf(token) })),
  }));
}

/** Accumulates one choice of a non-streamed chat response. */
export class ChatChoiceBuilder extends GeneratedText {
  constructor(readonly index: number, private readonly wantLogprobs: boolean) {
    super();
  }

  build(): ChatCompletionChoice {
    return {
      index: this.index,
      message: { role: 'assistant', content: this.text },
      logprobs: this.wantLogprobs ? { content: chatLogprobsOf(this.entries) } : null,
      finish_reason: this.finish,
    };
  }
}

export function buildChatResponse(head: ResponseHead, choices: ChatCompletionChoice[], usage: Usage, batch: BatchInfo): ChatCompletionResponse {
  return { id: head.id, object: 'chat.completion', created: head.created, model: head.model, choices, usage, chameleon: chameleonInfo(batch) };
}

/** One streamed chunk's choice: the delta of its message (the role in its first chunk), its logprobs and finish. */
export interface ChatDelta {
  index: number;
  delta: { role?: 'assistant'; content?: string };
  logprobs: ChatLogprobs | null;
  finish_reason: 'stop' | 'length' | null;
}
