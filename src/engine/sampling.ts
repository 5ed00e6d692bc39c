/**
 * Per-row token choice and log-probabilities. Pure functions over one row of logits, so that the worker's
 * loop stays small and these can be tested alone.
 *
 * - temperature 0: greedy (argmax; ties go to the lower id).
 * - otherwise softmax(logits / temperature), then top_k, then top_p (nucleus), then a draw from the row's own
 *   seeded generator: the same seed, prompt and batch shape give the same tokens.
 * - top_k / top_p never sort the whole vocabulary: a bounded heap selects the best candidates (most likely first,
 *   ties to the lower id, the order a full sort gives), widened only while they hold less than top_p of the mass.
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
  readonly heap: Int32Array;
  constructor(readonly vocabSize: number) {
    this.probs = new Float64Array(vocabSize);
    this.order = new Int32Array(vocabSize);
    this.heap = new Int32Array(vocabSize);
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
  let candidates = cutK ? params.topK : Math.min(FIRST_CANDIDATES, V);
  for (;;) {
    const n = selectBest(probs, V, candidates, order, scratch.heap);
    let keep = n;
    let mass = 0;
    if (cutK) {
      for (let j = 0; j < n; j++) mass += probs[order[j]];
      total = mass;
      mass = 0;
    }
    if (cutP) {
      const target = params.topP * total;
      let j = 0;
      while (j < n) {
        mass += probs[order[j]];
        j++;
        if (mass >= target) break;
      }
      if (mass < target && !cutK && n < V) {
        candidates = Math.min(candidates * 4, V);
        continue;
      }
      keep = Math.max(1, j);
      total = mass;
    }
    let r = rng.next() * total;
    for (let j = 0; j < keep; j++) {
      r -= probs[order[j]];
      if (r < 0) return order[j];
    }
    return order[keep - 1];
  }
}

/** Candidates a top_p cut looks at first (widened 4x at a time while they hold too little mass). */
const FIRST_CANDIDATES = 64;

/** `a` ranks before `b`: more likely, or as likely and a lower id. */
function before(probs: Float64Array, a: number, b: number): boolean {
  return probs[a] > probs[b] || (probs[a] === probs[b] && a < b);
}

/**
 * The `m` best ids of probs[0..V) into order[0..m), best first, through a heap of the m best so far (its worst
 * on top): about V comparisons when m is small. Returns m.
 */
function selectBest(probs: Float64Array, V: number, m: number, order: Int32Array, heap: Int32Array): number {
  let size = 0;
  const siftDown = (at: number) => {
    for (;;) {
      const left = 2 * at + 1;
      if (left >= size) return;
      const right = left + 1;
      const worse = right < size && before(probs, heap[left], heap[right]) ? right : left;
      if (!before(probs, heap[at], heap[worse])) return;
      const moved = heap[at];
      heap[at] = heap[worse];
      heap[worse] = moved;
      at = worse;
    }
  };
  for (let i = 0; i < V; i++) {
    if (size < m) {
      let at = size++;
      heap[at] = i;
      while (at > 0) {
        const parent = (at - 1) >> 1;
        if (!before(probs, heap[parent], heap[at])) break;
        const moved = heap[at];
        heap[at] = heap[parent];
        heap[parent] = moved;
        at = parent;
      }
    } else if (before(probs, i, heap[0])) {
      heap[0] = i;
      siftDown(0);
    }
  }
  for (let end = size - 1; end > 0; end--) {
    order[end] = heap[0];
    heap[0] = heap[end];
    size = end;
    siftDown(0);
  }
  if (size > 0) order[0] = heap[0];
  return m;
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
