/** One row's logit_bias and penalties on a row of logits: vLLM's semantics, and only the tokens they name touched. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RowPenalties } from '../../src/engine/penalties.js';
import type { Penalties } from '../../src/engine/protocol.js';

const none: Penalties = { logitBias: [], presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1 };

/** The row's adjustment of `logits` (at offset `offset` of a longer buffer, as the decode loop hands rows). */
function adjusted(penalties: Partial<Penalties>, prompt: number[], generated: number[], logits: number[], offset = 0): number[] {
  const row = new RowPenalties({ ...none, ...penalties }, prompt);
  for (const token of generated) row.record(token);
  const buffer = new Float32Array(offset + logits.length).fill(Number.NaN);
  buffer.set(logits, offset);
  row.apply(buffer, offset);
  assert.ok(buffer.subarray(0, offset).every(Number.isNaN), 'other rows of the buffer are not touched');
  return Array.from(buffer.subarray(offset));
}

const logits = [2, -2, 1, 0.5, -1, 3];

test('logit_bias is added to its tokens; -100 bans a token outright', () => {
  assert.deepEqual(adjusted({ logitBias: [[0, 1.5], [4, -0.5], [5, -100]] }, [], [], logits, 6), [3.5, -2, 1, 0.5, -1.5, Number.NEGATIVE_INFINITY]);
});

test('presence and frequency count the generated tokens only: presence once per token, frequency once per time it came', () => {
  // prompt tokens 1 and 3 are not penalised; 2 came twice, 5 once
  const generated = [2, 5, 2];
  assert.deepEqual(adjusted({ presencePenalty: 0.5 }, [1, 3], generated, logits), [2, -2, 0.5, 0.5, -1, 2.5]);
  assert.deepEqual(adjusted({ frequencyPenalty: 0.5 }, [1, 3], generated, logits), [2, -2, 0, 0.5, -1, 2.5]);
  assert.deepEqual(adjusted({ frequencyPenalty: 0.5, presencePenalty: -1 }, [1, 3], generated, logits), [2, -2, 1, 0.5, -1, 3.5], 'negative values favour repeats');
});

test('the repetition penalty lowers every token of the prompt or the output once: positive logits divided, the others multiplied', () => {
  // seen: 1 (prompt), 3 (prompt and output, penalised once), 4 and 5 (output, 5 twice)
  assert.deepEqual(adjusted({ repetitionPenalty: 2 }, [1, 3], [3, 5, 4, 5], logits), [2, -4, 1, 0.25, -2, 1.5]);
  assert.deepEqual(adjusted({ repetitionPenalty: 0.5 }, [1], [0], logits), [4, -1, 1, 0.5, -1, 3], 'below 1 it favours them');
});

test('in vLLM\'s order: logit_bias first, then repetition, then frequency and presence', () => {
  // token 0: (2 + 2) / 2 - 1 * 1 - 0.5 = 0.5; a ban stays a ban through every penalty
  const out = adjusted({ logitBias: [[0, 2], [5, -100]], repetitionPenalty: 2, frequencyPenalty: 1, presencePenalty: 0.5 }, [], [0, 5], logits);
  assert.deepEqual(out, [0.5, -2, 1, 0.5, -1, Number.NEGATIVE_INFINITY]);
});

test('neutral penalties leave the logits as they are', () => {
  assert.deepEqual(adjusted({}, [0, 1, 2], [3, 4, 5, 5], logits), logits);
});
