/**
 * Online clustering of one batch window (ml-kmeans, k-means++ initialisation, seeded per batch), and the
 * cluster contexts the hypernetwork reads: the plain mean of each cluster's member features.
 *
 * k = clamp(ceil(n / targetClusterSize), 1, maxClusters), never more than the number of distinct points, so
 * a single request, identical requests, and fewer points than k all give well-formed clusters. Clusters are
 * numbered 0..k-1 in order of first appearance in the batch, with no empty cluster.
 */
import { kmeans } from 'ml-kmeans';
import { Random } from '../engine/sampling.js';

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
  const result = kmeans(data, k, { initialization: kmeansPlusPlus(points, k, options.seed), maxIterations: 100 });
  return compact(result.clusters);
}

function squaredDistance(a: Float32Array, b: Float32Array): number {
  let sum = 0;
  for (let j = 0; j < a.length; j++) sum += (a[j] - b[j]) ** 2;
  return sum;
}

/**
 * k-means++ seeding (each next center drawn with probability proportional to its squared distance from the
 * nearest center so far), seeded. ml-kmeans's own 'kmeans++' copies matrix rows inside its distance loops and
 * takes about 10 ms for 32 points of 256 dimensions, on the event loop, for every window; this takes well under
 * a millisecond, and ml-kmeans runs the iterations from these centers.
 */
function kmeansPlusPlus(points: readonly Float32Array[], k: number, seed: number): number[][] {
  const rng = new Random(seed);
  const first = points[Math.floor(rng.next() * points.length)];
  const centers = [first];
  const nearest = points.map((p) => squaredDistance(p, first));
  while (centers.length < k) {
    const total = nearest.reduce((s, d) => s + d, 0);
    let r = rng.next() * total;
    let pick = nearest.findIndex((d) => (r -= d) < 0);
    if (pick < 0) pick = nearest.findIndex((d) => d > 0);
    const center = points[pick];
    centers.push(center);
    points.forEach((p, i) => { nearest[i] = Math.min(nearest[i], squaredDistance(p, center)); });
  }
  return centers.map((c) => Array.from(c));
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
