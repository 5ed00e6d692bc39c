/**
 * Per-row token choice and log-probabilities. Pure functions over one row of logits, so that the worker's
 * loop stays small and these can be tested alone.
 *
 * - temperature 0: greedy (argmax; ties go to the lower id).
 * - otherwise softmax(logits / temperature), then top_k, then top_p (nucleus), then a draw from the row's own
 *   seeded generator: the same seed, prompt and batch shape give the same tokens.
 * - top_k / top_p never sort: a quickselect over the ranking (most likely first, ties to the lower id, the order a
 *   full sort gives) finds the k best, then the shortest head of the ranking that holds top_p of their mass; the
 *   draw walks that set in array order. The set and each member's probability are those of the textbook sorted
 *   cut, so the distribution is the same, in expected O(vocabulary) time instead of a sort per row and step.
 * - log-probabilities are those of the model's raw distribution (log-softmax of the logits, as OpenAI reports).
 */

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

export interface SamplingParams {
  temperature: number;
  topP: number;
  /** 0 = no top-k cut. */
  topK: number;
}

/** Reusable buffers for one vocabulary size. */
export class SamplingScratch {
  readonly probs: Float64Array;
  readonly order: Int32Array;
  constructor(readonly vocabSize: number) {
    this.probs = new Float64Array(vocabSize);
    this.order = new Int32Array(vocabSize);
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

/** Chooses the next token from `logits[offset .. offset + V)`. */
export function sampleToken(
  logits: Float32Array,
  offset: number,
  params: SamplingParams,
  rng: Random,
  scratch: SamplingScratch,
): number {
  const V = scratch.vocabSize;
  if (params.temperature <= 0) return argmax(logits, offset, V);
  const { probs, order } = scratch;
  const invT = 1 / params.temperature;
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (logits[offset + i] > max) max = logits[offset + i];
  let total = 0;
  for (let i = 0; i < V; i++) {
    const p = Math.exp((logits[offset + i] - max) * invT);
    probs[i] = p;
    total += p;
  }
  const cutK = params.topK > 0 && params.topK < V;
  const cutP = params.topP < 1;
  if (!cutK && !cutP) {
    let r = rng.next() * total;
    for (let i = 0; i < V; i++) {
      r -= probs[i];
      if (r < 0) return i;
    }
    return argmax(logits, offset, V);
  }
  for (let i = 0; i < V; i++) order[i] = i;
  let size = V;
  if (cutK) {
    selectBest(probs, order, params.topK);
    size = params.topK;
    total = 0;
    for (let j = 0; j < size; j++) total += probs[order[j]];
  }
  if (cutP) size = nucleusSize(probs, order, size, params.topP * total);
  let mass = 0;
  for (let j = 0; j < size; j++) mass += probs[order[j]];
  let r = rng.next() * mass;
  for (let j = 0; j < size; j++) {
    r -= probs[order[j]];
    if (r < 0) return order[j];
  }
  return order[size - 1];
}

/** `a` ranks before `b`: more likely, or as likely and a lower id. */
function before(probs: Float64Array, a: number, b: number): boolean {
  return probs[a] > probs[b] || (probs[a] === probs[b] && a < b);
}

function swap(order: Int32Array, i: number, j: number): void {
  const t = order[i];
  order[i] = order[j];
  order[j] = t;
}

/**
 * Partitions order[lo, hi) around a median-of-three pivot: returns its final position p, with every id ranked
 * before the pivot in [lo, p) and every id ranked after it in (p, hi).
 */
function partition(probs: Float64Array, order: Int32Array, lo: number, hi: number): number {
  const mid = (lo + hi - 1) >> 1;
  const last = hi - 1;
  if (before(probs, order[mid], order[lo])) swap(order, mid, lo);
  if (before(probs, order[last], order[lo])) swap(order, last, lo);
  if (before(probs, order[mid], order[last])) swap(order, mid, last);
  const pivot = order[last];
  let store = lo;
  for (let i = lo; i < last; i++) if (before(probs, order[i], pivot)) swap(order, i, store++);
  swap(order, store, last);
  return store;
}

/** Moves the k best-ranked ids of order[0, n) into order[0, k) (in no particular order). */
function selectBest(probs: Float64Array, order: Int32Array, k: number): void {
  let lo = 0;
  let hi = order.length;
  while (hi - lo > 1) {
    const p = partition(probs, order, lo, hi);
    if (p === k || p === k - 1) return;
    if (p > k) hi = p;
    else lo = p + 1;
  }
}

/**
 * The nucleus: moves into order[0, size) the shortest head of the ranking of order[0, n) whose mass reaches
 * `target`, and returns its size.
 */
function nucleusSize(probs: Float64Array, order: Int32Array, n: number, target: number): number {
  let lo = 0;
  let hi = n;
  let above = 0; // mass of order[0, lo), all ranked before order[lo, hi)
  while (hi > lo) {
    const p = partition(probs, order, lo, hi);
    let head = 0;
    for (let i = lo; i < p; i++) head += probs[order[i]];
    if (above + head >= target) {
      hi = p;
    } else if (above + head + probs[order[p]] >= target) {
      return p + 1;
    } else {
      above += head + probs[order[p]];
      lo = p + 1;
    }
  }
  return Math.max(1, lo);
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

/** Log-probability of `token` and the top `n` alternatives under the raw logits of one row. */
export function tokenLogprobs(logits: Float32Array, offset: number, size: number, token: number, n: number): TokenChoiceLogprobs {
  const lse = logSumExp(logits, offset, size);
  return {
    logprob: logits[offset + token] - lse,
    top: topIds(logits, offset, size, n).map((id) => [id, logits[offset + id] - lse]),
  };
}
