/**
 * The plan of one batch: each row's context and adapter, and the adapters the engine must make or place.
 *
 * Rows whose mode takes a cluster's context are clustered with k-means, each mode on its own together with the
 * prompts of that mode in flight (context-pool.ts), so no mode ever shapes another's adapters; a cluster's context is
 * its members' mean feature. Each row's mode then fills its adapter (modes.ts), in the batch's part of the stack
 *
 *   [ hypernetwork outputs: one per batch cluster in use, one per `request` row
 *     | ready-made factors: one per library / masks cluster in use, one per named adapter in use ]
 *
 * after the shared zero and static entries. Only what the batch needs is computed: rows that share a cluster or a
 * named adapter share one adapter. A hypernetwork context that the package's gate does not admit takes the static
 * LoRA instead, and an admitted one carries the weight the gate gives its generated update (see gate.ts).
 *
 * Pure but for reading the features: what joins the pools is returned, not added.
 */
import { FIRST_BATCH_ADAPTER, STATIC_ADAPTER, ZERO_ADAPTER, type Batch, type LoraFactors } from '../engine/protocol.js';
import { clusterContexts, clusterFeatures, type ClusteringOptions } from './clustering.js';
import type { DomainAdapters, DomainMode } from './domains.js';
import type { FeatureExtractor } from './features.js';
import { gateOutcome, type ContextGate, type GateOutcome } from './gate.js';
import { MODES, isClustered, type AdaptationMode, type AdapterHandle, type AdapterRef, type AdapterSources, type ClusteredMode, type FillRow } from './modes.js';

/** One row (prompt) of the window, as the planner needs it. */
export interface PlanRow {
  mode: AdaptationMode;
  /** The ids its feature is the mean of: the prompt's, or a chat's message contents (without the template). */
  promptIds: number[];
  /** The prompt tokens they count for (without an added BOS). */
  textTokens: number;
  /** The named adapter (mode `adapter`). */
  adapter?: AdapterRef;
}

/** A prompt in flight, as later windows of its mode are clustered with it. */
export interface PoolEntry {
  feature: Float32Array;
  tokens: number;
}

export interface Planner {
  features: Pick<FeatureExtractor, 'dim' | 'feature'>;
  domains: Pick<DomainAdapters, 'factors'>;
  gate: Pick<ContextGate, 'similarity' | 'admits' | 'weight'> | null;
}

export interface RowPlan {
  /** The row's adapter (RowSpec.adapterIndex). */
  adapterIndex: number;
  /** Its cluster within its mode's clustering (-1: its mode is not clustered). */
  cluster: number;
  /** Members of the cluster whose mean is its context (1: its own prompt's; 0: it takes no context). */
  clusterSize: number;
  /** Prompts it was clustered with (its mode's in the window and in flight); the window's rows when not clustered. */
  clusteredWith: number;
  /** Clusters of its mode's clustering (0 when not clustered). */
  clusters: number;
  /** The gate's outcome for its hypernetwork context (null: no hypernetwork context). */
  gate: GateOutcome | null;
  /** What it brings to its mode's pool while in flight (null when its mode is not clustered). */
  poolEntry: PoolEntry | null;
}

/** The adapters of the batch as the engine takes them. */
export type BatchAdapters = Pick<Batch, 'contexts' | 'contextCount' | 'contextWeights' | 'factors'>;

export interface BatchPlan {
  rows: RowPlan[];
  adapters: BatchAdapters;
  /** Each clustered mode present: its clusters and the points it clustered. */
  clusterings: Array<{ mode: ClusteredMode; clusters: number; points: number }>;
  featuresMs: number;
  clusteringMs: number;
}

interface RowContext {
  context: Float32Array | null;
  contextTokens: number;
  cluster: number;
  clusterSize: number;
  clusteredWith: number;
  clusters: number;
  poolEntry: PoolEntry | null;
}

/** Plans a window's rows; `inFlight(mode)` is the pool its clustered rows are clustered with. */
export function planBatch(rows: readonly PlanRow[], inFlight: (mode: ClusteredMode) => readonly PoolEntry[], planner: Planner, clustering: ClusteringOptions): BatchPlan {
  let t = performance.now();
  const features = rows.map((row) => (MODES[row.mode].context === 'none' ? null : planner.features.feature(row.promptIds)));
  const featuresMs = performance.now() - t;
  t = performance.now();
  const contexts: RowContext[] = rows.map((row, i) => ({
    context: features[i], contextTokens: row.textTokens, cluster: -1, clusterSize: features[i] === null ? 0 : 1, clusteredWith: rows.length, clusters: 0, poolEntry: null,
  }));
  const clusterings: BatchPlan['clusterings'] = [];
  for (const mode of new Set(rows.map((row) => row.mode))) {
    if (!isClustered(mode)) continue;
    const members = rows.flatMap((row, i) => (row.mode === mode ? [i] : []));
    clusterings.push({ mode, ...clusterMode(members, features, rows, inFlight(mode), contexts, clustering, planner.features.dim) });
  }
  const stack = new StackBuilder(planner);
  const filled = rows.map((row, i) => {
    const { context, contextTokens, cluster } = contexts[i];
    return stack.fill(row, { context, contextTokens, shareKey: `${row.mode}:${cluster < 0 ? `row${i}` : cluster}`, adapter: row.adapter });
  });
  // indices only once every row is filled: the ready-made adapters sit after all the generated ones
  const planned = rows.map((_, i): RowPlan => {
    const { cluster, clusterSize, clusteredWith, clusters, poolEntry } = contexts[i];
    return { adapterIndex: stack.indexOf(filled[i].handle), cluster, clusterSize, clusteredWith, clusters, gate: filled[i].gate, poolEntry };
  });
  return { rows: planned, adapters: stack.adapters(planner.features.dim), clusterings, featuresMs, clusteringMs: performance.now() - t };
}

/** Clusters one mode's rows with its prompts in flight; writes each member's context into `out`. */
function clusterMode(
  members: readonly number[], features: ReadonlyArray<Float32Array | null>, rows: readonly PlanRow[], neighbours: readonly PoolEntry[],
  out: RowContext[], options: ClusteringOptions, dim: number,
): { clusters: number; points: number } {
  const points = [...neighbours.map((n) => n.feature), ...members.map((i) => features[i]!)];
  const tokens = [...neighbours.map((n) => n.tokens), ...members.map((i) => rows[i].textTokens)];
  const { assignments, k } = clusterFeatures(points, options);
  const means = clusterContexts(points, { assignments, k }, dim);
  const size = new Array<number>(k).fill(0);
  const clusterTokens = new Array<number>(k).fill(0);
  assignments.forEach((c, p) => {
    size[c]++;
    clusterTokens[c] += tokens[p];
  });
  members.forEach((i, j) => {
    const cluster = assignments[neighbours.length + j];
    out[i] = {
      context: means[cluster], contextTokens: clusterTokens[cluster], cluster, clusterSize: size[cluster], clusteredWith: points.length, clusters: k,
      poolEntry: { feature: features[i]!, tokens: rows[i].textTokens },
    };
  });
  return { clusters: k, points: points.length };
}

type Handle = { kind: 'fixed' | 'generated' | 'ready'; index: number };

/** Hands out the batch's adapters as the modes' fillers ask for them, sharing those asked for by the same key. */
class StackBuilder implements AdapterSources {
  private readonly inputs: Float32Array[] = [];
  private readonly weights: number[] = [];
  private readonly factors: LoraFactors[] = [];
  private readonly handles: Handle[] = [];
  private readonly shared = new Map<string, AdapterHandle>();
  private outcome: GateOutcome | null = null;
  private readonly zeroHandle = this.handle({ kind: 'fixed', index: ZERO_ADAPTER });
  private readonly staticHandle = this.handle({ kind: 'fixed', index: STATIC_ADAPTER });

  constructor(private readonly planner: Planner) {}

  fill(row: PlanRow, fillRow: FillRow): { handle: AdapterHandle; gate: GateOutcome | null } {
    this.outcome = null;
    const handle = MODES[row.mode].fill(fillRow, this);
    return { handle, gate: this.outcome };
  }

  zero(): AdapterHandle {
    return this.zeroHandle;
  }

  static(): AdapterHandle {
    return this.staticHandle;
  }

  generated(key: string | null, context: Float32Array, tokens: number): AdapterHandle {
    this.outcome = gateOutcome(this.planner.gate, context, tokens);
    // a generated update weighted 0 (gated, or made from no tokens) is the static LoRA
    if (this.outcome.weight === 0) return this.static();
    const known = key === null ? undefined : this.shared.get(key);
    if (known !== undefined) return known;
    this.weights.push(this.outcome.weight);
    const handle = this.handle({ kind: 'generated', index: this.inputs.push(context) - 1 });
    if (key !== null) this.shared.set(key, handle);
    return handle;
  }

  ready(key: string, make: () => LoraFactors): AdapterHandle {
    let handle = this.shared.get(key);
    if (handle === undefined) {
      handle = this.handle({ kind: 'ready', index: this.factors.push(make()) - 1 });
      this.shared.set(key, handle);
    }
    return handle;
  }

  domain(mode: DomainMode, context: Float32Array): LoraFactors {
    return this.planner.domains.factors(mode, context);
  }

  /** The adapter's index in the stack: the shared entries, then the generated adapters, then the ready-made ones. */
  indexOf(handle: AdapterHandle): number {
    const { kind, index } = this.handles[handle];
    if (kind === 'fixed') return index;
    return FIRST_BATCH_ADAPTER + (kind === 'generated' ? index : this.inputs.length + index);
  }

  adapters(dim: number): BatchAdapters {
    const contexts = new Float32Array(Math.max(this.inputs.length, 1) * dim);
    this.inputs.forEach((v, i) => contexts.set(v, i * dim));
    return { contexts, contextCount: this.inputs.length, contextWeights: Float32Array.from(this.weights), factors: this.factors };
  }

  private handle(entry: Handle): AdapterHandle {
    return this.handles.push(entry) - 1;
  }
}
