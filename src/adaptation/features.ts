/**
 * Request features (docs/model-package.md, "Features"): the L2-normalised mean of the token-embedding rows of
 * a prompt's ids, leaving out the ids the manifest excludes (BOS / end of text).
 */
export class FeatureExtractor {
  private readonly exclude: Set<number>;
  private loaded: Float32Array | null = null;

  /**
   * `table` is the [vocabSize, dim] embedding matrix, row-major, or a function that reads it on first use (a base-only
   * package never computes a feature, and the table of a large vocabulary is hundreds of megabytes).
   */
  constructor(private readonly table: Float32Array | (() => Float32Array), readonly vocabSize: number, readonly dim: number, excludeIds: readonly number[]) {
    if (typeof table !== 'function') this.check(table);
    this.exclude = new Set(excludeIds);
  }

  private check(table: Float32Array): Float32Array {
    if (table.length !== this.vocabSize * this.dim) throw new Error(`embedding table has ${table.length} values, expected ${this.vocabSize} x ${this.dim}`);
    return table;
  }

  private get rows(): Float32Array {
    this.loaded ??= typeof this.table === 'function' ? this.check(this.table()) : this.table;
    return this.loaded;
  }

  /** The feature of one prompt; all zeros when no token counts (an empty prompt). */
  feature(ids: readonly number[]): Float32Array {
    const D = this.dim;
    const table = this.rows;
    const sum = new Float64Array(D);
    let count = 0;
    for (const id of ids) {
      if (this.exclude.has(id) || id < 0 || id >= this.vocabSize) continue;
      const row = id * D;
      for (let j = 0; j < D; j++) sum[j] += table[row + j];
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
