/**
 * Online clustering of one batch window (ml-kmeans, k-means++ initialisation, seeded per batch), and the
 * cluster contexts the hypernetwork reads: the plain mean of each cluster's member features.
 *
 * k = clamp(ceil(n / targetClusterSize), 1, maxClusters), never more than the number of distinct points, so
 * a single request, identical requests, and fewer points than k all give well-formed clusters. Clusters are
 * numbered 0..k-1 in order of first appearance in the batch, with no empty cluster.
 */
import { kmeans } from 'ml-kmeans';

export interface ClusteringOptions {
  targetClusterSize: number;
  maxClusters: number;
  seed: number;
}

export interface Clustering {
  /** Cluster of each point. */
  assignments: number[];
  /** Number of (non-empty) clusters. */
  k: number;
}

export function chooseK(n: number, targetClusterSize: number, maxClusters: number): number {
  return Math.min(Math.max(Math.ceil(n / targetClusterSize), 1), maxClusters);
}

function countDistinct(points: readonly Float32Array[]): number {
  const seen = new Set<string>();
  for (const p of points) seen.add(Buffer.from(p.buffer, p.byteOffset, p.byteLength).toString('base64'));
  return seen.size;
}

/** Renumbers cluster ids by first appearance and drops empty ones. */
function compact(raw: readonly number[]): Clustering {
  const ids = new Map<number, number>();
  const assignments = raw.map((c) => {
    let id = ids.get(c);
    if (id === undefined) {
      id = ids.size;
      ids.set(c, id);
    }
    return id;
  });
  return { assignments, k: ids.size };
}

export function clusterFeatures(points: readonly Float32Array[], options: ClusteringOptions): Clustering {
  const n = points.length;
  if (n === 0) return { assignments: [], k: 0 };
  const k = Math.min(chooseK(n, options.targetClusterSize, options.maxClusters), countDistinct(points));
  if (k <= 1) return { assignments: points.map(() => 0), k: 1 };
  const data = points.map((p) => Array.from(p));
  const result = kmeans(data, k, { initialization: 'kmeans++', seed: options.seed, maxIterations: 100 });
  return compact(result.clusters);
}

/** Mean feature of each cluster: [k, dim] row-major. */
export function clusterContexts(points: readonly Float32Array[], clustering: Clustering, dim: number): Float32Array[] {
  const sums = Array.from({ length: clustering.k }, () => new Float64Array(dim));
  const counts = new Array<number>(clustering.k).fill(0);
  points.forEach((p, i) => {
    const c = clustering.assignments[i];
    counts[c]++;
    for (let j = 0; j < dim; j++) sums[c][j] += p[j];
  });
  return sums.map((sum, c) => Float32Array.from(sum, (v) => v / counts[c]));
}
