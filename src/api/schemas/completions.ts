/**
 * POST /v1/completions: OpenAI's legacy completions request and response, plus the ChameleonLLM extensions
 * (`adaptation`, `top_k`, `ignore_eos` in the request; `chameleon` in the response).
 */
import Type, { type Static } from 'typebox';
import { DEFAULT_ADAPTATION_MODE, MODES, REQUEST_ADAPTATION_MODES, type RequestAdaptationMode } from '../../adaptation/modes.js';

/** An optional field that may also be null (OpenAI's clients send null for unset fields). */
export const nullable = <T extends Type.TSchema>(schema: T) => Type.Optional(Type.Union([schema, Type.Null()]));

// one literal per mode; typed as a one-element tuple so that the static type is the union of the modes
const requestModes = () => REQUEST_ADAPTATION_MODES.map((mode) => Type.Literal(mode)) as [Type.TLiteral<RequestAdaptationMode>];
const MODE_HELP = REQUEST_ADAPTATION_MODES.map((mode) => {
  const isDefault = mode === DEFAULT_ADAPTATION_MODE
    ? ' (default; none for a base-only package, which serves none alone: GET /v1/models lists each model\'s adaptation_modes)'
    : '';
  return `${mode}${isDefault}: ${MODES[mode].help}`;
}).join('; ');

export const AdaptationMode = Type.Union(requestModes(), {
  description: `ChameleonLLM extension. ${MODE_HELP}. A named adapter is chosen by \`model\` instead (its mode is reported as adapter).`,
});

const ServedMode = Type.Union([...requestModes(), Type.Literal('adapter')], {
  description: `How the request was adapted: ${MODE_HELP}; adapter: ${MODES.adapter.help}`,
});

export const CompletionRequest = Type.Object(
  {
    model: Type.String({ description: 'Model id, as listed by GET /v1/models: the base model, or a named adapter (served on top of it)' }),
    prompt: Type.Union([
      Type.String(),
      Type.Array(Type.String(), { minItems: 1 }),
      Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 }),
      Type.Array(Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 }), { minItems: 1 }),
    ], {
      description: 'A prompt, or an array of prompts (one choice each); a prompt is a text, or the token ids to feed as they are (no beginning-of-text token added)',
    }),
    max_tokens: nullable(Type.Integer({ minimum: 0, description: 'Tokens to generate (default 16); 0 with echo scores the prompt' })),
    temperature: nullable(Type.Number({ minimum: 0, maximum: 2, description: '0 = greedy, as is any value below 1e-5 (default 1)' })),
    top_p: nullable(Type.Number({ exclusiveMinimum: 0, maximum: 1, description: 'Nucleus sampling mass (default 1)' })),
    top_k: nullable(Type.Integer({ minimum: 0, description: 'Extension: sample among the k most likely tokens (0 = all, the default)' })),
    seed: nullable(Type.Integer({ description: 'Seed of this request’s sampler; the same seed and prompt repeat the same tokens' })),
    stop: nullable(Type.Union([Type.String(), Type.Array(Type.String(), { maxItems: 4 })], { description: 'Up to 4 stop strings (not included in the text)' })),
    stream: nullable(Type.Boolean({ description: 'Server-sent events, ending with data: [DONE]' })),
    stream_options: nullable(Type.Object({ include_usage: Type.Optional(Type.Boolean()) })),
    logprobs: nullable(Type.Integer({ minimum: 0, maximum: 5, description: 'Return token logprobs and this many top alternatives per token' })),
    echo: nullable(Type.Boolean({ description: 'Return the prompt before the completion (with logprobs: the prompt’s token logprobs)' })),
    n: nullable(Type.Integer({
      minimum: 1,
      description: 'Choices per prompt (default 1), each sampled in its own row: choice index = prompt index * n + sample. With a seed, sample j draws with seed + j, so it equals the request with that seed and n = 1',
    })),
    best_of: nullable(Type.Integer({ minimum: 1, description: 'Only 1 is supported' })),
    suffix: nullable(Type.String({ description: 'Not supported (must be empty)' })),
    presence_penalty: nullable(Type.Number({ minimum: -2, maximum: 2, description: 'Subtracted from the logit of every token the choice has generated so far (default 0)' })),
    frequency_penalty: nullable(Type.Number({ minimum: -2, maximum: 2, description: 'Subtracted from a token\'s logit once per time the choice has generated it (default 0)' })),
    logit_bias: nullable(Type.Record(Type.String(), Type.Number({ minimum: -100, maximum: 100 }), {
      maxProperties: 1024,
      description: 'Token id (a decimal string, within the vocabulary) to a bias from -100 to 100 added to its logit before sampling; -100 bans the token',
    })),
    user: nullable(Type.String({ description: 'End-user id (logged only)' })),
    adaptation: Type.Optional(AdaptationMode),
    adaptation_scale: nullable(Type.Number({
      minimum: 0, maximum: 2,
      description: 'Extension: strength of this request\'s low-rank update (0 = the base model, 1 = as trained, the default; up to 2), applied to its rows only inside the shared decoder run',
    })),
    ignore_eos: nullable(Type.Boolean({ description: 'Extension: keep generating past the end-of-text token (benchmarks)' })),
    min_tokens: nullable(Type.Integer({ minimum: 0, description: 'Extension (vLLM): tokens generated before an end-of-text or stop token may be' })),
    repetition_penalty: nullable(Type.Number({
      exclusiveMinimum: 0,
      description: 'Extension (vLLM): divides the positive logits, and multiplies the others, of every token in the prompt or generated so far (default 1 = none; above 1 discourages repeats)',
    })),
    stop_token_ids: nullable(Type.Array(Type.Integer({ minimum: 0 }), { maxItems: 64, description: 'Extension (vLLM): token ids that end a choice as end of text does (not part of its text)' })),
    response_format: nullable(Type.Object({
      type: Type.Union([Type.Literal('text'), Type.Literal('json_object'), Type.Literal('json_schema')]),
      json_schema: Type.Optional(Type.Unknown()),
    }, { description: 'Only text (the default); json_object and json_schema are refused (constrained decoding is not implemented)' })),
  },
  {
    $id: 'CompletionRequest',
    // a field the service does not implement is refused (unsupported_parameter), never silently ignored
    additionalProperties: false,
  },
);
export type CompletionRequest = Static<typeof CompletionRequest>;

const Logprobs = Type.Object(
  {
    tokens: Type.Array(Type.String()),
    token_logprobs: Type.Array(Type.Union([Type.Number(), Type.Null()])),
    // Not Type.Record: its key pattern "^.*$" does not match a token with a line break ("\n"), and the response
    // serializer silently drops properties that match no pattern.
    top_logprobs: Type.Array(Type.Union([Type.Object({}, { additionalProperties: Type.Number() }), Type.Null()])),
    text_offset: Type.Array(Type.Integer()),
  },
  { $id: 'Logprobs' },
);
export type Logprobs = Static<typeof Logprobs>;

export const FinishReason = Type.Union([Type.Literal('stop'), Type.Literal('length'), Type.Null()]);

const Choice = Type.Object({
  text: Type.String(),
  index: Type.Integer(),
  logprobs: Type.Union([Type.Ref('Logprobs'), Type.Null()]),
  finish_reason: FinishReason,
});

export const Usage = Type.Object(
  { prompt_tokens: Type.Integer(), completion_tokens: Type.Integer(), total_tokens: Type.Integer() },
  { $id: 'Usage' },
);
export type Usage = Static<typeof Usage>;

export const ChameleonInfo = Type.Object(
  {
    batch_id: Type.Integer({ description: 'The batch window this request was served in (requests of one window share it)' }),
    batch_size: Type.Integer({
      description: 'Prompts this request was clustered with: for the clustered modes (batch, library, library_weighted, masks) the window\'s and the in-flight prompts of its mode; for other modes the prompts of its window',
    }),
    cluster_index: Type.Integer({ description: 'k-means cluster of the (first) prompt among them' }),
    cluster_indices: Type.Array(Type.Integer(), { description: 'Cluster of each prompt (choice), in choice order' }),
    cluster_size: Type.Integer({ description: 'Members of the cluster whose mean formed the (first) prompt\'s context: 1 for `request` mode, 0 for `none`, `static` and named adapters' }),
    cluster_sizes: Type.Array(Type.Integer(), { description: 'cluster_size of each prompt (choice), in choice order' }),
    context_similarity: Type.Union([Type.Number(), Type.Null()], {
      description: 'Cosine similarity of the (first) prompt\'s hypernetwork context (its cluster\'s mean, or its own feature in `request` mode) to the nearest training domain; null for modes without such a context or a package without a gate',
    }),
    context_similarities: Type.Array(Type.Union([Type.Number(), Type.Null()]), { description: 'context_similarity of each prompt (choice), in choice order' }),
    gated: Type.Boolean({
      description: 'True when that context was below the package\'s gate (`hypernet.gate.min_similarity`, chosen on validation): unlike every training domain, so the static LoRA alone served the prompt instead of a generated update',
    }),
    gated_choices: Type.Array(Type.Boolean(), { description: 'gated of each prompt (choice), in choice order' }),
    dynamic_weight: Type.Union([Type.Number(), Type.Null()], {
      description: 'Weight of the (first) prompt\'s generated update on top of the static LoRA: 0 when gated, else n / (n + `hypernet.gate.prior_tokens`), n being the prompt tokens its context was made from (its cluster\'s members together, or its own prompt in `request` mode), so that a context from few tokens moves the model less; null for modes without a generated update',
    }),
    dynamic_weights: Type.Array(Type.Union([Type.Number(), Type.Null()]), { description: 'dynamic_weight of each prompt (choice), in choice order' }),
    num_clusters: Type.Integer({ description: 'Clusters among the clustered prompts (0 for modes that cluster nothing)' }),
    mode: ServedMode,
    adapter: Type.Union([Type.String(), Type.Null()], { description: 'The named adapter that served the request (null: the base model\'s modes)' }),
    adaptation_scale: Type.Number({ description: 'Strength of the low-rank update that was applied' }),
  },
  { $id: 'ChameleonInfo', description: 'ChameleonLLM extension: how this request was batched and adapted' },
);
export type ChameleonInfo = Static<typeof ChameleonInfo>;

export const CompletionResponse = Type.Object(
  {
    id: Type.String(),
    object: Type.Literal('text_completion'),
    created: Type.Integer(),
    model: Type.String(),
    choices: Type.Array(Choice),
    usage: Type.Ref('Usage'),
    chameleon: Type.Ref('ChameleonInfo'),
  },
  { $id: 'CompletionResponse' },
);
export type CompletionResponse = Static<typeof CompletionResponse>;
export type CompletionChoice = CompletionResponse['choices'][number];

/** The shared schemas, registered once with fastify.addSchema. */
export const completionSchemas = [Logprobs, Usage, ChameleonInfo, CompletionRequest, CompletionResponse];
