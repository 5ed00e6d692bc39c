/**
 * Request features (docs/model-package.md, "Features"): the L2-normalised mean of the token-embedding rows of
 * a prompt's ids, leaving out the ids the manifest excludes (BOS / end of text).
 */
export class FeatureExtractor {
  private readonly exclude: Set<number>;

  /** `table` is the [vocabSize, dim] embedding matrix, row-major. */
  constructor(private readonly table: Float32Array, readonly vocabSize: number, readonly dim: number, excludeIds: readonly number[]) {
    if (table.length !== vocabSize * dim) throw new Error(`embedding table has ${table.length} values, expected ${vocabSize} x ${dim}`);
    this.exclude = new Set(excludeIds);
  }

  /** The feature of one prompt; all zeros when no token counts (an empty prompt). */
  feature(ids: readonly number[]): Float32Array {
    const D = this.dim;
    const sum = new Float64Array(D);
    let count = 0;
    for (const id of ids) {
      if (this.exclude.has(id) || id < 0 || id >= this.vocabSize) continue;
      const row = id * D;
      for (let j = 0; j < D; j++) sum[j] += this.table[row + j];
      count++;
    }
    const out = new Float32Array(D);
    if (count === 0) return out;
    let norm = 0;
    for (let j = 0; j < D; j++) {
      sum[j] /= count;
      norm += sum[j] * sum[j];
    }
    norm = Math.sqrt(norm);
    if (norm === 0) return out;
    for (let j = 0; j < D; j++) out[j] = sum[j] / norm;
    return out;
  }
}
