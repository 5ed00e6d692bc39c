/**
 * manifest.json of a model package (docs/model-package.md): its schema, loading, and the checks that do not
 * need ONNX Runtime (files present, binary sizes, dimensions consistent). The ONNX signatures are checked
 * against the same manifest by `checkSignature` once the worker has opened the sessions.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Type, { type Static } from 'typebox';
import Value from 'typebox/value';
import { ModelPackageError } from '../errors.js';

export const MANIFEST_FORMAT = 'chameleon-package/3';

const Dim = Type.Union([Type.Integer({ minimum: 0 }), Type.String({ minLength: 1 })]);
const TensorSpec = Type.Object({
  name: Type.String({ minLength: 1 }),
  dtype: Type.String(),
  shape: Type.Array(Dim),
});
const FileTensor = Type.Object({
  file: Type.String({ minLength: 1 }),
  dtype: Type.Literal('float32'),
  shape: Type.Array(Type.Integer({ minimum: 1 })),
});
const Signature = Type.Object({ inputs: Type.Array(TensorSpec), outputs: Type.Array(TensorSpec) });
const PositiveInt = Type.Integer({ minimum: 1 });
/** A set of adapters, one per training domain, picked or blended by a softmax over the context's cosine to each domain centroid. */
const DomainSelector = Type.Object({
  names: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }),
  rank: PositiveInt,
  temperature: Type.Number({ minimum: 0 }),
});

/** Below min_similarity (cosine to the nearest training domain's centroid), a context gets the static LoRA alone. */
const ContextGate = Type.Object({
  names: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }),
  min_similarity: Type.Number({ minimum: -1, maximum: 1 }),
  /** An admitted context made from n prompt tokens gets its generated update weighted n / (n + prior_tokens); absent or 0: 1. */
  prior_tokens: Type.Optional(Type.Number({ minimum: 0 })),
});

export const ManifestSchema = Type.Object({
  format: Type.Literal(MANIFEST_FORMAT),
  name: Type.String(),
  dims: Type.Object({
    vocab_size: PositiveInt,
    d_model: PositiveInt,
    n_layer: PositiveInt,
    n_head: PositiveInt,
    /** Key/value heads (grouped-query attention): the cache's head axis; absent = n_head. */
    n_kv_head: Type.Optional(PositiveInt),
    head_dim: PositiveInt,
    context: PositiveInt,
  }),
  /** Where the decoder came from (an imported Hugging Face checkpoint): kept for people and tools, not read by the server. */
  architecture: Type.Optional(Type.Object({
    family: Type.Optional(Type.String()),
    hf_architecture: Type.Optional(Type.String()),
    dtype: Type.Optional(Type.String()),
    tied_head: Type.Optional(Type.Boolean()),
  })),
  /** Absent, with hypernet and the static LoRA's tensors: a base-only package (see isBaseOnly). */
  lora: Type.Optional(Type.Object({ rank: PositiveInt, scale: Type.Number() })),
  tokenizer: Type.Object({
    file: Type.String({ minLength: 1 }),
    /** How a token's text becomes bytes: GPT-2's byte-level alphabet (default), or SentencePiece's `▁` and `<0xNN>` tokens. */
    kind: Type.Optional(Type.Union([Type.Literal('byte_level'), Type.Literal('sentencepiece')])),
    eos_token: Type.String(),
    eos_token_id: Type.Integer({ minimum: 0 }),
    /** Generation stops at any of these (absent: [eos_token_id]). */
    eos_token_ids: Type.Optional(Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 })),
    /** null only when add_bos is false (a model without a beginning-of-text token). */
    bos_token_id: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()]),
    bos_token: Type.Optional(Type.String()),
    add_bos: Type.Boolean(),
    /** Kept for the chat API (a Jinja chat template, as in tokenizer_config.json). */
    chat_template: Type.Optional(Type.String()),
    special_tokens: Type.Optional(Type.Unknown()),
  }),
  features: Type.Object({
    kind: Type.Literal('l2_normalised_mean_token_embedding'),
    exclude_token_ids: Type.Array(Type.Integer({ minimum: 0 })),
  }),
  files: Type.Record(Type.String(), Type.String()),
  sha256: Type.Optional(Type.Record(Type.String(), Type.String({ pattern: '^[0-9a-f]{64}$' }))),
  tensors: Type.Object({
    embeddings: FileTensor,
    static_lora_a: Type.Optional(FileTensor),
    static_lora_b: Type.Optional(FileTensor),
    library_lora_a: Type.Optional(FileTensor),
    library_lora_b: Type.Optional(FileTensor),
    library_centroids: Type.Optional(FileTensor),
    masks_lora_a: Type.Optional(FileTensor),
    masks_lora_b: Type.Optional(FileTensor),
    masks_mask_a: Type.Optional(FileTensor),
    masks_mask_b: Type.Optional(FileTensor),
    masks_centroids: Type.Optional(FileTensor),
    gate_centroids: Type.Optional(FileTensor),
  }),
  decoder: Signature,
  /** rank: of the factors the hypernetwork outputs (twice lora.rank when it adds a dynamic update to the static one). */
  hypernet: Type.Optional(Type.Intersect([Signature, Type.Object({ rank: PositiveInt, on_static: Type.Optional(Type.Boolean()), gate: Type.Optional(ContextGate) })])),
  /** The modular LoRA library (one LoRA per training domain): also served as named adapters. */
  library: Type.Optional(DomainSelector),
  /** LoRA*Mask: one shared LoRA, one mask over its entries per training domain. */
  masks: Type.Optional(DomainSelector),
});

export type Manifest = Static<typeof ManifestSchema>;
export type TensorSignature = Static<typeof TensorSpec>;
export type Dims = Manifest['dims'];
export type TensorKey = keyof Manifest['tensors'];

/** Files the service itself reads (equivalence.json and eval.json are for tests and people). */
const REQUIRED_FILES = ['decoder', 'tokenizer', 'embeddings'] as const;
/** Read too when the package has its adaptation parts (see isBaseOnly). */
const ADAPTATION_FILES = ['hypernet', 'static_lora_a', 'static_lora_b'] as const;
const LIBRARY_TENSORS = ['library_lora_a', 'library_lora_b', 'library_centroids'] as const;
const MASK_TENSORS = ['masks_lora_a', 'masks_lora_b', 'masks_mask_a', 'masks_mask_b', 'masks_centroids'] as const;

/** The command that adds the adaptation parts to a base-only package (named in the server's refusals). */
export const ADAPT_COMMAND = 'npm run model:adapt -- --base <package> --corpus <texts>';

/** Per-layer cache inputs, in the order the runtime hands over its slot buffers. */
export function cacheInputNames(layers: number): string[] {
  return Array.from({ length: layers }, (_, l) => [`past_key_${l}`, `past_value_${l}`]).flat();
}

const DECODER_INPUTS = ['input_ids', 'position_ids', 'past_length', 'lora_a', 'lora_b', 'cluster_index', 'lora_scale', 'logits_index'];
const DECODER_OUTPUTS = ['logits', 'present_keys', 'present_values'];
const HYPERNET_INPUTS = ['context'];
const HYPERNET_OUTPUTS = ['lora_a', 'lora_b'];

/** Key/value heads: the head axis of the cache (fewer than n_head with grouped-query attention). */
export function kvHeads(dims: Dims): number {
  return dims.n_kv_head ?? dims.n_head;
}

/** Ids that end generation: tokenizer.eos_token_ids, or the one eos_token_id. */
export function eosTokenIds(m: Manifest): number[] {
  return m.tokenizer.eos_token_ids ?? [m.tokenizer.eos_token_id];
}

/**
 * A base-only package (what `npm run model:import` writes) has a decoder and its tokenizer and embeddings, but no
 * hypernetwork, no static LoRA and no LoRA section: it serves the base model alone (adaptation `none`, and named
 * adapters loaded from files). loadManifest refuses a package with only some of those parts.
 */
export function isBaseOnly(m: Manifest): boolean {
  return m.hypernet === undefined;
}

/** A package with its adaptation parts: hypernet, lora and the static LoRA's tensors are all there. */
export type AdaptiveManifest = Manifest & {
  hypernet: NonNullable<Manifest['hypernet']>;
  lora: NonNullable<Manifest['lora']>;
  tensors: Manifest['tensors'] & Required<Pick<Manifest['tensors'], 'static_lora_a' | 'static_lora_b'>>;
};

export function isAdaptive(m: Manifest): m is AdaptiveManifest {
  return m.hypernet !== undefined && m.lora !== undefined && m.tensors.static_lora_a !== undefined && m.tensors.static_lora_b !== undefined;
}

export interface LoadedManifest {
  dir: string;
  manifest: Manifest;
  /** Absolute paths of the files the service reads: the required ones, the hypernetwork's (when there is one), and the tensors the manifest lists. */
  paths: Record<(typeof REQUIRED_FILES)[number], string> & { hypernet?: string } & Partial<Record<TensorKey, string>>;
}

function fail(dir: string, problem: string): never {
  throw new ModelPackageError(`Model package ${dir} is not valid: ${problem}`);
}

/** Reads and checks `<dir>/manifest.json` and the files it names; throws ModelPackageError naming the problem. */
export function loadManifest(dirIn: string): LoadedManifest {
  const dir = resolve(dirIn);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) fail(dirIn, `folder not found (MODEL_DIR=${dirIn})`);
  const manifestPath = join(dir, 'manifest.json');
  if (!existsSync(manifestPath)) fail(dirIn, 'manifest.json is missing');
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(manifestPath, 'utf8'));
  } catch (error) {
    fail(dirIn, `manifest.json is not valid JSON (${(error as Error).message})`);
  }
  if (!Value.Check(ManifestSchema, raw)) {
    const first = [...Value.Errors(ManifestSchema, raw)].slice(0, 3)
      .map((e) => `${e.instancePath || '/'} ${e.message}`).join('; ');
    fail(dirIn, `manifest.json does not follow ${MANIFEST_FORMAT}: ${first}`);
  }
  const manifest = raw;
  checkConsistency(dirIn, manifest);

  const paths = {} as LoadedManifest['paths'];
  const needed: ReadonlyArray<(typeof REQUIRED_FILES)[number] | (typeof ADAPTATION_FILES)[number]> = isBaseOnly(manifest) ? REQUIRED_FILES : [...REQUIRED_FILES, ...ADAPTATION_FILES];
  for (const key of needed) {
    const name = manifest.files[key];
    if (name === undefined) fail(dirIn, `manifest.files.${key} is missing`);
    const path = join(dir, name);
    if (!existsSync(path)) fail(dirIn, `file ${name} (manifest.files.${key}) is missing`);
    paths[key] = path;
  }
  for (const [key, spec] of Object.entries(manifest.tensors) as Array<[TensorKey, Static<typeof FileTensor>]>) {
    if (spec.file !== manifest.files[key]) fail(dirIn, `tensors.${key}.file (${spec.file}) differs from files.${key} (${manifest.files[key]})`);
    const path = join(dir, spec.file);
    if (!existsSync(path)) fail(dirIn, `file ${spec.file} (tensors.${key}) is missing`);
    paths[key] = path;
    const expected = spec.shape.reduce((a, b) => a * b, 1) * 4;
    const actual = statSync(path).size;
    if (actual !== expected) {
      fail(dirIn, `${spec.file} has ${actual} bytes, but tensors.${key} says float32 [${spec.shape.join(', ')}] = ${expected} bytes`);
    }
  }
  for (const [key, digest] of Object.entries(manifest.sha256 ?? {})) {
    const name = manifest.files[key];
    if (name === undefined) fail(dirIn, `sha256.${key} names no entry of files`);
    const path = join(dir, name);
    if (!existsSync(path)) continue; // only files the service reads must be present (checked above)
    const actual = fileSha256(path);
    if (actual !== digest) fail(dirIn, `${name} does not match its sha256 in the manifest (${actual.slice(0, 12)}... != ${digest.slice(0, 12)}...)`);
  }
  return { dir, manifest, paths };
}

/** A file's digest read in blocks: an imported decoder's weights can pass the 2 GB a single Buffer may hold. */
function fileSha256(path: string): string {
  const hash = createHash('sha256');
  const block = Buffer.allocUnsafe(1 << 24);
  const fd = openSync(path, 'r');
  try {
    for (let read = readSync(fd, block); read > 0; read = readSync(fd, block)) hash.update(block.subarray(0, read));
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

function sameShape(actual: readonly (number | string)[], expected: readonly (number | string)[]): boolean {
  return actual.length === expected.length && actual.every((d, i) => d === expected[i]);
}

function checkConsistency(dir: string, m: Manifest): void {
  const { vocab_size: V, d_model: D, n_layer: L, n_head: H, head_dim: HD } = m.dims;
  const KV = kvHeads(m.dims);
  // n_head x head_dim may differ from d_model (an explicit head_dim, as Gemma's and some Llama variants'); the
  // cache's shapes below are checked against n_kv_head and head_dim instead.
  if (H % KV !== 0) fail(dir, `dims.n_head (${H}) is not a multiple of dims.n_kv_head (${KV})`);
  const tok = m.tokenizer;
  if (tok.eos_token_id >= V) fail(dir, `tokenizer.eos_token_id ${tok.eos_token_id} is outside the vocabulary (${V})`);
  for (const id of tok.eos_token_ids ?? []) if (id >= V) fail(dir, `tokenizer.eos_token_ids has ${id}, outside the vocabulary (${V})`);
  if (tok.eos_token_ids !== undefined && !tok.eos_token_ids.includes(tok.eos_token_id)) {
    fail(dir, `tokenizer.eos_token_ids [${tok.eos_token_ids.join(', ')}] does not include tokenizer.eos_token_id ${tok.eos_token_id}`);
  }
  if (tok.bos_token_id === null && tok.add_bos) fail(dir, 'tokenizer.bos_token_id is null but tokenizer.add_bos is true (a package that adds BOS must name it)');
  if (tok.bos_token_id !== null && tok.bos_token_id >= V) fail(dir, `tokenizer.bos_token_id ${tok.bos_token_id} is outside the vocabulary (${V})`);
  const expectTensor = (key: TensorKey, shape: number[]) => {
    const spec = m.tensors[key];
    if (spec === undefined) fail(dir, `tensors.${key} is missing`);
    if (!sameShape(spec.shape, shape)) {
      fail(dir, `tensors.${key}.shape is [${spec.shape.join(', ')}], expected [${shape.join(', ')}] from dims and the adapters' rank`);
    }
  };
  expectTensor('embeddings', [V, D]);

  // The adaptation parts come together (npm run model:adapt writes them all) or not at all (a base-only package).
  const parts: Array<[string, boolean]> = [
    ['the hypernet section', m.hypernet !== undefined],
    ['the lora section', m.lora !== undefined],
    ['tensors.static_lora_a', m.tensors.static_lora_a !== undefined],
    ['tensors.static_lora_b', m.tensors.static_lora_b !== undefined],
    ['files.hypernet', m.files.hypernet !== undefined],
  ];
  const present = parts.filter(([, here]) => here).map(([name]) => name);
  if (present.length > 0 && present.length < parts.length) {
    const absent = parts.filter(([, here]) => !here).map(([name]) => name);
    fail(dir, `it has ${present.join(', ')} but not ${absent.join(', ')}: a package has all of its adaptation parts (as ${ADAPT_COMMAND} writes them) or none (a base-only package, as npm run model:import writes it)`);
  }
  if (!isAdaptive(m)) {
    for (const section of ['library', 'masks'] as const) {
      if (m[section] !== undefined) fail(dir, `it is base-only (no hypernet, lora or static LoRA) but has a ${section} section; ${ADAPT_COMMAND} writes them together`);
    }
  }
  const R = m.lora?.rank ?? 0;
  if (isAdaptive(m)) {
    expectTensor('static_lora_a', [1, R, D]);
    expectTensor('static_lora_b', [1, V, R]);
  }
  const selectorTensors = (section: 'library' | 'masks', keys: readonly TensorKey[]) => {
    const listed = keys.filter((k) => m.tensors[k] !== undefined);
    if (m[section] === undefined) {
      if (listed.length > 0) fail(dir, `tensors ${listed.join(', ')} are listed but the manifest has no ${section} section`);
      return undefined;
    }
    return { K: m[section].names.length, r: m[section].rank };
  };
  const library = selectorTensors('library', LIBRARY_TENSORS);
  if (library !== undefined) {
    expectTensor('library_lora_a', [library.K, library.r, D]);
    expectTensor('library_lora_b', [library.K, V, library.r]);
    expectTensor('library_centroids', [library.K, D]);
  }
  const masks = selectorTensors('masks', MASK_TENSORS);
  if (masks !== undefined) {
    expectTensor('masks_lora_a', [1, masks.r, D]);
    expectTensor('masks_lora_b', [1, V, masks.r]);
    expectTensor('masks_mask_a', [masks.K, masks.r, D]);
    expectTensor('masks_mask_b', [masks.K, V, masks.r]);
    expectTensor('masks_centroids', [masks.K, D]);
  }
  const hypernet = m.hypernet;
  if (hypernet?.gate !== undefined) {
    // a gated context gets the static LoRA alone: the same as zeroing the generated part only for a network on static
    if (hypernet.on_static !== true) fail(dir, 'hypernet.gate needs hypernet.on_static (a network whose outputs start with the static LoRA)');
    expectTensor('gate_centroids', [hypernet.gate.names.length, D]);
  }
  else if (m.tensors.gate_centroids !== undefined) fail(dir, `tensors gate_centroids is listed but ${hypernet === undefined ? 'the package has no hypernet' : 'hypernet has no gate'}`);

  const expectNames = (where: string, specs: TensorSignature[], names: string[]) => {
    const got = specs.map((s) => s.name);
    const missing = names.filter((n) => !got.includes(n));
    if (missing.length > 0) fail(dir, `${where} lacks ${missing.join(', ')} (the contract needs ${names.join(', ')})`);
  };
  expectNames('decoder.inputs', m.decoder.inputs, [...DECODER_INPUTS, ...cacheInputNames(L)]);
  expectNames('decoder.outputs', m.decoder.outputs, DECODER_OUTPUTS);
  if (hypernet !== undefined) {
    expectNames('hypernet.inputs', hypernet.inputs, HYPERNET_INPUTS);
    expectNames('hypernet.outputs', hypernet.outputs, HYPERNET_OUTPUTS);
  }

  // Fixed axes the service relies on, taken from dims (symbolic axes may carry any name).
  type Fixed = [string, TensorSignature[], string, Array<number | null>];
  const fixed: Fixed[] = [
    ['decoder.inputs', m.decoder.inputs, 'input_ids', [null, null]],
    ['decoder.inputs', m.decoder.inputs, 'position_ids', [null, null]],
    ['decoder.inputs', m.decoder.inputs, 'past_length', [null]],
    ...cacheInputNames(L).map((name): Fixed => ['decoder.inputs', m.decoder.inputs, name, [null, KV, null, HD]]),
    ['decoder.inputs', m.decoder.inputs, 'lora_a', [null, null, D]],
    ['decoder.inputs', m.decoder.inputs, 'lora_b', [null, V, null]],
    ['decoder.inputs', m.decoder.inputs, 'cluster_index', [null]],
    ['decoder.inputs', m.decoder.inputs, 'lora_scale', [null]],
    ['decoder.inputs', m.decoder.inputs, 'logits_index', [null]],
    ['decoder.outputs', m.decoder.outputs, 'logits', [null, V]],
    ['decoder.outputs', m.decoder.outputs, 'present_keys', [L, null, KV, null, HD]],
    ['decoder.outputs', m.decoder.outputs, 'present_values', [L, null, KV, null, HD]],
    ...(hypernet === undefined ? [] : [
      ['hypernet.inputs', hypernet.inputs, 'context', [null, D]],
      ['hypernet.outputs', hypernet.outputs, 'lora_a', [null, hypernet.rank, D]],
      ['hypernet.outputs', hypernet.outputs, 'lora_b', [null, V, hypernet.rank]],
    ] satisfies Fixed[]),
  ];
  for (const [where, specs, name, shape] of fixed) {
    const spec = specs.find((s) => s.name === name)!;
    const ok = spec.shape.length === shape.length &&
      shape.every((d, i) => d === null ? typeof spec.shape[i] === 'string' : spec.shape[i] === d);
    if (!ok) {
      const want = shape.map((d) => d === null ? '<axis name>' : String(d)).join(', ');
      fail(dir, `${where} ${name} has shape [${spec.shape.join(', ')}], expected [${want}] from dims and the ranks`);
    }
  }
  const dtypes: Record<string, string> = {
    input_ids: 'int64', position_ids: 'int64', past_length: 'int64', cluster_index: 'int64', logits_index: 'int64',
  };
  for (const spec of [...m.decoder.inputs, ...m.decoder.outputs, ...(hypernet?.inputs ?? []), ...(hypernet?.outputs ?? [])]) {
    const want = dtypes[spec.name] ?? 'float32';
    if (spec.dtype !== want) fail(dir, `tensor ${spec.name} has dtype ${spec.dtype}, expected ${want}`);
  }
}

/** What ONNX Runtime reports about one input or output of a session. */
export interface RuntimeTensorInfo {
  name: string;
  type: string;
  shape: ReadonlyArray<number | string>;
}

/**
 * Compares a session's inputs/outputs with the manifest: same names, same dtypes, fixed axes equal, and axes the
 * manifest calls symbolic not frozen to a number by the export. Returns the problems (empty = match).
 */
export function checkSignature(
  what: string,
  expected: { inputs: TensorSignature[]; outputs: TensorSignature[] },
  actual: { inputs: RuntimeTensorInfo[]; outputs: RuntimeTensorInfo[] },
): string[] {
  const problems: string[] = [];
  for (const side of ['inputs', 'outputs'] as const) {
    const want = expected[side];
    const got = actual[side];
    const gotNames = got.map((t) => t.name);
    const wantNames = want.map((t) => t.name);
    for (const name of wantNames) if (!gotNames.includes(name)) problems.push(`${what} has no ${side.slice(0, -1)} named ${name} (it has ${gotNames.join(', ')})`);
    for (const name of gotNames) if (!wantNames.includes(name)) problems.push(`${what} has an ${side.slice(0, -1)} ${name} that the manifest does not list`);
    for (const spec of want) {
      const info = got.find((t) => t.name === spec.name);
      if (info === undefined) continue;
      if (info.type !== spec.dtype) problems.push(`${what} ${spec.name} is ${info.type}, the manifest says ${spec.dtype}`);
      if (info.shape.length === 0) continue; // the graph does not declare this shape
      if (info.shape.length !== spec.shape.length) {
        problems.push(`${what} ${spec.name} has rank ${info.shape.length} [${info.shape.join(', ')}], the manifest says [${spec.shape.join(', ')}]`);
        continue;
      }
      spec.shape.forEach((dim, i) => {
        const runtime = info.shape[i];
        if (typeof dim === 'number' && typeof runtime === 'number' && runtime !== dim) {
          problems.push(`${what} ${spec.name} axis ${i} is ${runtime}, the manifest says ${dim}`);
        }
        if (typeof dim === 'string' && typeof runtime === 'number' && runtime >= 0) {
          problems.push(`${what} ${spec.name} axis ${i} is fixed to ${runtime}, the manifest says it varies (${dim})`);
        }
      });
    }
  }
  return problems;
}
