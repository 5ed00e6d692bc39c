import Type from 'typebox';

export const ModelObject = Type.Object(
  {
    id: Type.String(),
    object: Type.Literal('model'),
    created: Type.Integer(),
    owned_by: Type.String(),
    root: Type.String({ description: 'The base model this id runs on (vLLM\'s convention)' }),
    parent: Type.Union([Type.String(), Type.Null()], { description: 'For a named adapter, the base model it adapts; null for the base model' }),
    max_model_len: Type.Optional(Type.Integer({ description: 'The base model: the longest prompt + completion served, in tokens (MAX_MODEL_LEN, vLLM\'s field)' })),
    adaptation_modes: Type.Optional(Type.Array(Type.String(), {
      description: 'The base model: the `adaptation` modes it serves (a base-only package, as npm run model:import writes it, serves only none; npm run model:adapt adds the rest)',
    })),
  },
  { $id: 'Model' },
);

export const ModelList = Type.Object(
  { object: Type.Literal('list'), data: Type.Array(Type.Ref('Model')) },
  { $id: 'ModelList' },
);

export const AdapterObject = Type.Object(
  {
    id: Type.String({ description: 'Its name: use it as `model` in completions' }),
    object: Type.Literal('adapter'),
    created: Type.Integer(),
    parent: Type.String({ description: 'The base model it adapts' }),
    rank: Type.Integer({ description: 'Rank of its LM-head LoRA' }),
    source: Type.Union([Type.Literal('package'), Type.Literal('file'), Type.Literal('examples')], {
      description: 'package: the model package\'s LoRA library; file: loaded from a file or folder; examples: made by the hypernetwork from example texts',
    }),
    examples: Type.Optional(Type.Integer({ description: 'Example texts it was made from (source examples)' })),
    context_similarity: Type.Optional(Type.Number({ description: 'Source examples, with a package that has a gate: cosine similarity of the examples\' mean feature to the nearest training domain' })),
    gated: Type.Optional(Type.Boolean({ description: 'Source examples: true when that similarity was below the package\'s gate, so the adapter is the static LoRA' })),
    dynamic_weight: Type.Optional(Type.Number({ description: 'Source examples, with a package that has a gate: the weight of the generated update on top of the static LoRA (0 when gated, else n / (n + hypernet.gate.prior_tokens), n the examples\' tokens together)' })),
  },
  { $id: 'Adapter' },
);

export const AdapterList = Type.Object(
  { object: Type.Literal('list'), data: Type.Array(Type.Ref('Adapter')) },
  { $id: 'AdapterList' },
);

export const AdapterDeleted = Type.Object(
  { id: Type.String(), object: Type.Literal('adapter'), deleted: Type.Literal(true) },
  { $id: 'AdapterDeleted' },
);

const MAX_EXAMPLES = 256;

export const LoadAdapterRequest = Type.Object({
  name: Type.String({ description: 'Name to serve it under (then `model` in completions)' }),
  path: Type.Optional(Type.String({
    minLength: 1,
    description: 'Either this, on the server inside one of ADAPTER_DIRS (no `..`; links resolved, and linked files inside a folder refused): a .safetensors LoRA of the LM head (lora_A [r, d_model], lora_B [vocab, r]), a PEFT adapter folder, or a model package of the same base model (its static LoRA)',
  })),
  examples: Type.Optional(Type.Array(Type.String({ minLength: 1 }), {
    minItems: 1, maxItems: MAX_EXAMPLES,
    description: `Or this: 1 to ${MAX_EXAMPLES} example texts; the hypernetwork makes the adapter from their mean feature, as for one cluster, without training`,
  })),
}, { $id: 'LoadAdapterRequest', additionalProperties: false, description: 'Load an adapter from a file (path) or make one from example texts (examples): exactly one of the two' });
