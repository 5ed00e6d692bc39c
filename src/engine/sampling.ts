/**
 * Per-row token choice and log-probabilities. Pure functions over one row, so that the worker's loop stays small
 * and these can be tested alone.
 *
 * - temperature below 1e-5 (0 included): greedy (argmax of the logits; ties go to the lower id), as vLLM does. A
 *   tinier temperature would overflow 1 / temperature in float32 and turn the probabilities into NaN.
 * - otherwise the row's probabilities softmax(logits / temperature) (computed by ONNX Runtime for all sampling
 *   rows of a step at once, see Runtime.softmax; `softmaxRow` is the same in JavaScript), then top_k, then top_p
 *   (nucleus), then a draw from the row's own seeded generator: the same seed, prompt and batch shape give the
 *   same tokens.
 * - top_p alone (at least 0.5) draws by rejection: a token drawn from the whole distribution is kept when the
 *   tokens ranked before it (more likely, or as likely with a lower id) hold less than top_p of the mass, which is
 *   exactly when the textbook sorted cut keeps it; otherwise it draws again. A kept token then has its nucleus
 *   probability, and the expected number of draws is 1 / (nucleus mass) <= 2. Each draw is two passes over the
 *   vocabulary with no sort and no table, a few times cheaper than the cut below.
 * - top_k, and a top_p below 0.5, never sort the vocabulary either: one pass files every candidate under the top
 *   bits of its probability's float32 pattern (4096 bins of 1/16 octave, ordered like the values), the bins are
 *   walked from the top to the one where the cut falls, and only that bin is sorted (most likely first, ties to the
 *   lower id, the order a full sort gives). The kept set and each member's probability are those of the textbook
 *   sorted cut, so the distribution is the same, in O(vocabulary) time.
 * - log-probabilities are the log-softmax of the logits the token is chosen from, not temperature-scaled (as OpenAI
 *   reports): the model's own, but for the rows whose min_tokens ban, logit_bias or penalties changed them in place
 *   before (decode-loop.ts, penalties.ts). Prompt logprobs (echo) are always the model's own.
 */
import type { SamplingParams } from './protocol.js';
/** A small, fast, seedable generator (sfc32 seeded through splitmix32); one per request. */
export class Random {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    // Mix both 32-bit halves of any safe integer (negative seeds included) into the state.
    const lo = seed >>> 0;
    const hi = Math.floor(Math.abs(seed) / 2 ** 32) >>> 0;
    let s = (lo ^ Math.imul(hi, 0x9e3779b9) ^ (seed < 0 ? 0x5bd1e995 : 0)) >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next();
    for (let i = 0; i < 12; i++) this.nextUint32();
  }

  nextUint32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextUint32() / 4294967296;
  }
}

/** Temperatures below this are greedy. */
const GREEDY_BELOW_TEMPERATURE = 1e-5;

export function isGreedy(temperature: number): boolean {
  return temperature < GREEDY_BELOW_TEMPERATURE;
}


/** Bits dropped from a probability's float32 pattern to file it in a bin: 4096 bins of 1/16 octave. */
const BIN_SHIFT = 19;
const BINS = 1 << (31 - BIN_SHIFT);

/** Reusable buffers for one vocabulary size. */
export class SamplingScratch {
  readonly order: Int32Array;
  readonly edge: Int32Array;
  readonly binCount = new Int32Array(BINS);
  readonly binMass = new Float64Array(BINS);
  constructor(readonly vocabSize: number) {
    this.order = new Int32Array(vocabSize);
    this.edge = new Int32Array(vocabSize);
  }
}

export function argmax(logits: Float32Array, offset: number, size: number): number {
  let best = 0;
  let bestValue = logits[offset];
  for (let i = 1; i < size; i++) {
    const v = logits[offset + i];
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/** softmax(logits[offset .. offset + size) / temperature) into out[outOffset ..), in float32 like ONNX Runtime's. */
export function softmaxRow(logits: Float32Array, offset: number, size: number, temperature: number, out: Float32Array, outOffset: number): void {
  let max = -Infinity;
  for (let i = 0; i < size; i++) if (logits[offset + i] > max) max = logits[offset + i];
  let total = 0;
  for (let i = 0; i < size; i++) {
    const p = Math.exp((logits[offset + i] - max) / temperature);
    out[outOffset + i] = p;
    total += p;
  }
  for (let i = 0; i < size; i++) out[outOffset + i] /= total;
}

/** The smallest top_p drawn by rejection (its expected number of draws is at most 1 / top_p). */
const REJECTION_MIN_TOP_P = 0.5;
/**
 * Draws before the binned cut takes over: 2^-64 likely at top_p >= 0.5, so in practice only a row whose
 * probabilities are not numbers (a broken model) gets there, and it must not stall the engine.
 */
const MAX_REJECTION_DRAWS = 64;

/** Chooses a token from a row of probabilities probs[offset .. offset + V) (a temperature that is not greedy). */
/** What sampling from probabilities reads of a row's sampling parameters. */
export type SamplingCuts = Pick<SamplingParams, 'temperature' | 'topP' | 'topK'>;

export function sampleFromProbs(probs: Float32Array, offset: number, params: SamplingCuts, rng: Random, scratch: SamplingScratch): number {
  const V = scratch.vocabSize;
  const row = probs.subarray(offset, offset + V);
  const cutK = params.topK > 0 && params.topK < V;
  const cutP = params.topP < 1;
  if (!cutK && !cutP) return draw(row, sum(row), rng);
  if (!cutK && params.topP >= REJECTION_MIN_TOP_P) {
    const total = sum(row);
    const target = params.topP * total;
    for (let attempt = 0; attempt < MAX_REJECTION_DRAWS; attempt++) {
      const id = draw(row, total, rng);
      if (massRankedBefore(row, id) < target) return id;
    }
  }
  const bits = new Uint32Array(probs.buffer, probs.byteOffset + offset * 4, V);
  const { order } = scratch;
  let size = cutHead(row, bits, null, V, cutK ? params.topK : V, cutP && !cutK ? params.topP : Infinity, scratch);
  if (cutK && cutP) size = cutHead(row, bits, order, size, size, params.topP, scratch);
  let mass = 0;
  for (let j = 0; j < size; j++) mass += row[order[j]];
  let r = rng.next() * mass;
  for (let j = 0; j < size; j++) {
    r -= row[order[j]];
    if (r < 0) return order[j];
  }
  return order[size - 1];
}

function sum(row: Float32Array): number {
  let total = 0;
  for (let i = 0; i < row.length; i++) total += row[i];
  return total;
}

/** A token drawn with probability row[id] / total (the last token with any mass if rounding leaves the draw over). */
function draw(row: Float32Array, total: number, rng: Random): number {
  let r = rng.next() * total;
  for (let i = 0; i < row.length; i++) {
    r -= row[i];
    if (r < 0) return i;
  }
  let last = row.length - 1;
  while (last > 0 && row[last] === 0) last--;
  return last;
}

/** The mass of the tokens ranked before `id`: more likely, or as likely with a lower id. */
function massRankedBefore(row: Float32Array, id: number): number {
  const p = row[id];
  let mass = 0;
  for (let i = 0; i < id; i++) if (row[i] >= p) mass += row[i];
  for (let i = id + 1; i < row.length; i++) if (row[i] > p) mass += row[i];
  return mass;
}

/** `a` ranks before `b`: more likely, or as likely and a lower id. */
function before(row: Float32Array, a: number, b: number): boolean {
  return row[a] > row[b] || (row[a] === row[b] && a < b);
}

/**
 * Writes into order[0, size) the shortest head of the ranking of the candidates (order[0, n), or every id when
 * `from` is null) that holds `count` ids or `fraction` of their mass, whichever comes first; returns its size.
 */
function cutHead(row: Float32Array, bits: Uint32Array, from: Int32Array | null, n: number, count: number, fraction: number, scratch: SamplingScratch): number {
  const { binCount, binMass, order, edge } = scratch;
  // A non-negative float's bit pattern orders like its value: its top bits are a bin index, larger bins first.
  let low = BINS;
  let high = 0;
  let total = 0;
  for (let j = 0; j < n; j++) {
    const id = from === null ? j : from[j];
    const b = bits[id] >>> BIN_SHIFT;
    binCount[b]++;
    binMass[b] += row[id];
    total += row[id];
    if (b < low) low = b;
    if (b > high) high = b;
  }
  const target = fraction * total;
  let above = 0;
  let aboveMass = 0;
  let cut = high;
  for (; cut > low; cut--) {
    if (binCount[cut] === 0) continue;
    if (above + binCount[cut] >= count || aboveMass + binMass[cut] >= target) break;
    above += binCount[cut];
    aboveMass += binMass[cut];
  }
  binCount.fill(0, low, high + 1);
  binMass.fill(0, low, high + 1);
  // order[0, above): the bins above the cut; then the cut's bin, sorted; the rest is dropped. Writing order while
  // reading it (from === order) is safe: an id is written at or before the position it was read from.
  let front = 0;
  let edgeSize = 0;
  for (let j = 0; j < n; j++) {
    const id = from === null ? j : from[j];
    const b = bits[id] >>> BIN_SHIFT;
    if (b > cut) order[front++] = id;
    else if (b === cut) edge[edgeSize++] = id;
  }
  const sorted = edge.subarray(0, edgeSize).sort((x, y) => (before(row, x, y) ? -1 : 1));
  let size = front;
  let mass = aboveMass;
  for (const id of sorted) {
    order[size++] = id;
    mass += row[id];
    if (size >= count || mass >= target) break;
  }
  return Math.max(1, size);
}

/** log(sum(exp(logits))) of one row. */
export function logSumExp(logits: Float32Array, offset: number, size: number): number {
  let max = -Infinity;
  for (let i = 0; i < size; i++) if (logits[offset + i] > max) max = logits[offset + i];
  let sum = 0;
  for (let i = 0; i < size; i++) sum += Math.exp(logits[offset + i] - max);
  return max + Math.log(sum);
}

/** The `n` highest-logit ids of a row, best first (ties: lower id first). */
export function topIds(logits: Float32Array, offset: number, size: number, n: number): number[] {
  const ids: number[] = [];
  if (n <= 0) return ids;
  for (let i = 0; i < size; i++) {
    const v = logits[offset + i];
    if (ids.length === n && v <= logits[offset + ids[n - 1]]) continue;
    let j = ids.length === n ? n - 1 : ids.length;
    if (ids.length < n) ids.push(i);
    while (j > 0 && logits[offset + ids[j - 1]] < v) {
      ids[j] = ids[j - 1];
      j--;
    }
    ids[j] = i;
  }
  return ids;
}

export interface TokenChoiceLogprobs {
  logprob: number;
  /** The `n` most likely ids with their log-probabilities. */
  top: Array<[number, number]>;
}

/** Log-probability of `token` and the top `n` alternatives under one row of logits (not temperature-scaled). */
export function tokenLogprobs(logits: Float32Array, offset: number, size: number, token: number, n: number): TokenChoiceLogprobs {
  const lse = logSumExp(logits, offset, size);
  return {
    logprob: logits[offset + token] - lse,
    top: topIds(logits, offset, size, n).map((id) => [id, logits[offset + id] - lse]),
  };
}
