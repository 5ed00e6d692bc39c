import Type from 'typebox';

export const ErrorResponse = Type.Object(
  {
    error: Type.Object({
      message: Type.String(),
      type: Type.String(),
      param: Type.Union([Type.String(), Type.Null()]),
      code: Type.Union([Type.String(), Type.Null()]),
    }),
  },
  { $id: 'ErrorResponse', description: "OpenAI's error shape" },
);

const ERROR_DESCRIPTIONS: Record<number, string> = {
  400: 'Invalid input (including a prompt longer than the context allows, or an unsupported option)',
  401: 'Missing or wrong API key or admin token (Authorization: Bearer <API_KEY> or <ADMIN_TOKEN>)',
  403: 'Admin routes are disabled (ADMIN_TOKEN is not set), or loading adapters from files is (ADAPTER_DIRS is not set)',
  404: 'Unknown model, adapter or route',
  409: 'Adapter name taken or reserved for the model package, MAX_ADAPTERS adapters already loaded, or a package adapter (which cannot be unloaded)',
  429: 'Queue full, or another adapter file load already waiting: retry after the Retry-After header',
  500: 'Inference failed',
  503: 'Not ready (model loading or failed) or shutting down',
  504: 'Deadline exceeded (REQUEST_TIMEOUT_MS)',
};

/** Response entries of the error statuses a route can answer with, all in OpenAI's error shape. */
export const errorResponses = (...statuses: number[]) =>
  Object.fromEntries(statuses.map((status) => [
    status,
    { description: ERROR_DESCRIPTIONS[status] ?? 'Error', content: { 'application/json': { schema: Type.Ref('ErrorResponse') } } },
  ]));
