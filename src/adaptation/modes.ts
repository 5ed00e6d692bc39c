/**
 * The adaptation modes, one entry each: what a package needs to serve it, where its rows' context comes from, and
 * how its rows' adapter is filled. The API's `adaptation` values, the modes a package serves and the batch planner
 * all read this table, so adding a mode is one entry here.
 */
import type { LoraFactors } from '../engine/protocol.js';
import type { ModelPackage } from '../model/package.js';
import type { NamedAdapter } from './adapters.js';
import type { DomainMode } from './domains.js';

/** A part of the model package a mode needs ('adaptation': the hypernetwork and the static LoRA). */
export type PackagePart = 'adaptation' | 'library' | 'masks';

/** What a package without the part is said to lack. */
export const PART_NAMES: Record<PackagePart, string> = {
  adaptation: 'hypernetwork and static LoRA',
  library: 'LoRA library',
  masks: 'LoRA*Mask set',
};

/**
 * Where a row's context (a feature the adapter is made from) comes from: its k-means cluster's mean, clustered with
 * the window's and the in-flight prompts of the same mode only; its own prompt's feature; or nowhere.
 */
export type ContextSource = 'cluster' | 'prompt' | 'none';

/** A row as its mode's filler sees it. */
export interface FillRow {
  /** The row's context (null when its mode takes none). */
  context: Float32Array | null;
  /** Prompt tokens the context was made from: its cluster's members together, or its own prompt. */
  contextTokens: number;
  /** The same key for every row of this mode in the same cluster (or for this row alone when it is not clustered). */
  shareKey: string;
  /** The named adapter the request's `model` chose (mode `adapter`). */
  adapter?: AdapterRef;
}

/** An adapter in the batch's stack, as the planner hands them out. */
export type AdapterHandle = number;

/** What a filler may give a row; rows that pass the same key share one adapter. */
export interface AdapterSources {
  zero(): AdapterHandle;
  static(): AdapterHandle;
  /** The hypernetwork's adapter for the context (its update weighted by the package's gate). */
  generated(key: string | null, context: Float32Array, tokens: number): AdapterHandle;
  /** Factors made before the engine, built once per key. */
  ready(key: string, make: () => LoraFactors): AdapterHandle;
  /** The library's or the masks' adapter for a context. */
  domain(mode: DomainMode, context: Float32Array): LoraFactors;
}

export interface ModeSpec {
  /** What the API documentation says of it. */
  help: string;
  /** The package part it needs (null: every package serves it). */
  needs: PackagePart | null;
  context: ContextSource;
  /** A request names it in `adaptation` (false: it is chosen another way). */
  requestable: boolean;
  fill(row: FillRow, sources: AdapterSources): AdapterHandle;
}

/** A named adapter as a request carries it. */
export type AdapterRef = Pick<NamedAdapter, 'id' | 'factors'>;

/** A cluster's adapter selected or blended from the package's library or masks. */
const fromDomains = (mode: DomainMode): ModeSpec['fill'] => (row, sources) => sources.ready(row.shareKey, () => sources.domain(mode, row.context!));

export const MODES = {
  batch: {
    help: 'one hypernetwork adapter per k-means cluster of the batch window',
    needs: 'adaptation', context: 'cluster', requestable: true,
    fill: (row, sources) => sources.generated(row.shareKey, row.context!, row.contextTokens),
  },
  request: {
    help: 'an adapter from this prompt alone',
    needs: 'adaptation', context: 'prompt', requestable: true,
    fill: (row, sources) => sources.generated(null, row.context!, row.contextTokens),
  },
  static: {
    help: 'the static-LoRA baseline',
    needs: 'adaptation', context: 'none', requestable: true,
    fill: (_row, sources) => sources.static(),
  },
  none: {
    help: 'the base model',
    needs: null, context: 'none', requestable: true,
    fill: (_row, sources) => sources.zero(),
  },
  library: {
    help: 'each cluster takes the library LoRA of the nearest training domain',
    needs: 'library', context: 'cluster', requestable: true,
    fill: fromDomains('library'),
  },
  library_weighted: {
    help: 'a softmax-weighted sum of the library LoRAs',
    needs: 'library', context: 'cluster', requestable: true,
    fill: fromDomains('library_weighted'),
  },
  masks: {
    help: 'LoRA*Mask, the shared LoRA under softmax-blended domain masks',
    needs: 'masks', context: 'cluster', requestable: true,
    fill: fromDomains('masks'),
  },
  adapter: {
    help: 'the named adapter chosen by `model`',
    needs: null, context: 'none', requestable: false,
    fill: (row, sources) => sources.ready(`adapter:${row.adapter!.id}`, () => row.adapter!.factors),
  },
} as const satisfies Record<string, ModeSpec>;

export type AdaptationMode = keyof typeof MODES;
/** The modes a request may name in `adaptation`. */
export type RequestAdaptationMode = { [M in AdaptationMode]: (typeof MODES)[M]['requestable'] extends true ? M : never }[AdaptationMode];
/** The modes whose rows are clustered (each mode on its own: no mode ever shapes another's context). */
export type ClusteredMode = { [M in AdaptationMode]: (typeof MODES)[M]['context'] extends 'cluster' ? M : never }[AdaptationMode];

const ALL_MODES = Object.keys(MODES) as AdaptationMode[];

/** What a request that names no mode gets from a package that serves it. */
export const DEFAULT_ADAPTATION_MODE: RequestAdaptationMode = 'batch';

/** The requestable modes, in the table's order (the API's order). */
export const REQUEST_ADAPTATION_MODES = ALL_MODES.filter((mode): mode is RequestAdaptationMode => MODES[mode].requestable);
export const CLUSTERED_MODES = ALL_MODES.filter((mode): mode is ClusteredMode => MODES[mode].context === 'cluster');

export function isClustered(mode: AdaptationMode): mode is ClusteredMode {
  return MODES[mode].context === 'cluster';
}

/** Whether a package has the part. */
export function hasPart(pkg: Pick<ModelPackage, 'adaptive'>, part: PackagePart | null): boolean {
  const adaptive = pkg.adaptive;
  switch (part) {
    case null:
      return true;
    case 'adaptation':
      return adaptive !== null;
    case 'library':
      return adaptive?.library !== undefined;
    case 'masks':
      return adaptive?.masks !== undefined;
  }
}

/** The requestable modes a package serves: a base-only package serves only `none`. */
export function adaptationModesOf(pkg: Pick<ModelPackage, 'adaptive'>): RequestAdaptationMode[] {
  return REQUEST_ADAPTATION_MODES.filter((mode) => hasPart(pkg, MODES[mode].needs));
}
