/** Cosine similarity of a context to L2-normalised centroids ([count, dim] row-major), shared by the domain selectors and the context gate. */
export function cosineToCentroids(context: Float32Array, centroids: Float32Array, count: number): number[] {
  const D = context.length;
  let norm = 0;
  for (let j = 0; j < D; j++) norm += context[j] * context[j];
  norm = Math.sqrt(norm) || 1;
  return Array.from({ length: count }, (_, k) => {
    let dot = 0;
    for (let j = 0; j < D; j++) dot += context[j] * centroids[k * D + j];
    return dot / norm;
  });
}
