/**
 * Every error the service raises on purpose carries a code; the code alone decides the HTTP status and the
 * OpenAI error `type` (the table below is the only place that mapping lives).
 */

export type ErrorCode =
  | 'invalid_request'
  | 'context_length_exceeded'
  | 'unsupported_parameter'
  | 'model_not_found'
  | 'invalid_adapter'
  | 'adapter_exists'
  | 'adapter_limit'
  | 'adapter_read_only'
  | 'adapter_name_reserved'
  | 'adapter_files_disabled'
  | 'adapter_busy'
  | 'invalid_api_key'
  | 'unauthorized'
  | 'admin_disabled'
  | 'not_found'
  | 'method_not_allowed'
  | 'request_timeout'
  | 'payload_too_large'
  | 'uri_too_long'
  | 'unsupported_media_type'
  | 'expectation_failed'
  | 'headers_too_large'
  | 'client_closed'
  | 'queue_full'
  | 'too_many_auth_failures'
  | 'not_ready'
  | 'shutting_down'
  | 'timeout'
  | 'engine_error'
  | 'internal_error';

interface Mapping {
  status: number;
  type: string;
}

const MAPPINGS: Record<ErrorCode, Mapping> = {
  invalid_request: { status: 400, type: 'invalid_request_error' },
  context_length_exceeded: { status: 400, type: 'invalid_request_error' },
  unsupported_parameter: { status: 400, type: 'invalid_request_error' },
  model_not_found: { status: 404, type: 'invalid_request_error' },
  invalid_adapter: { status: 400, type: 'invalid_request_error' },
  adapter_exists: { status: 409, type: 'invalid_request_error' },
  adapter_limit: { status: 409, type: 'invalid_request_error' },
  adapter_read_only: { status: 409, type: 'invalid_request_error' },
  adapter_name_reserved: { status: 409, type: 'invalid_request_error' },
  adapter_files_disabled: { status: 403, type: 'permission_error' },
  adapter_busy: { status: 429, type: 'rate_limit_error' },
  // OpenAI's own answer to a missing or wrong API key: 401, invalid_request_error, invalid_api_key.
  invalid_api_key: { status: 401, type: 'invalid_request_error' },
  unauthorized: { status: 401, type: 'authentication_error' },
  admin_disabled: { status: 403, type: 'permission_error' },
  not_found: { status: 404, type: 'invalid_request_error' },
  method_not_allowed: { status: 405, type: 'invalid_request_error' },
  request_timeout: { status: 408, type: 'invalid_request_error' },
  payload_too_large: { status: 413, type: 'invalid_request_error' },
  uri_too_long: { status: 414, type: 'invalid_request_error' },
  unsupported_media_type: { status: 415, type: 'invalid_request_error' },
  expectation_failed: { status: 417, type: 'invalid_request_error' },
  headers_too_large: { status: 431, type: 'invalid_request_error' },
  // nginx's 499: the client closed the connection before the answer was complete (logged and counted, never sent).
  client_closed: { status: 499, type: 'invalid_request_error' },
  queue_full: { status: 429, type: 'rate_limit_error' },
  too_many_auth_failures: { status: 429, type: 'rate_limit_error' },
  not_ready: { status: 503, type: 'server_error' },
  shutting_down: { status: 503, type: 'server_error' },
  timeout: { status: 504, type: 'timeout_error' },
  engine_error: { status: 500, type: 'server_error' },
  internal_error: { status: 500, type: 'server_error' },
};

export interface ServiceErrorOptions {
  param?: string | null;
  retryAfterSeconds?: number;
  cause?: unknown;
}

/** An error meant for the client: a code (-> status, type), a message, and the offending parameter. */
export class ServiceError extends Error {
  readonly code: ErrorCode;
  readonly param: string | null;
  readonly retryAfterSeconds: number | undefined;

  constructor(code: ErrorCode, message: string, options: ServiceErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ServiceError';
    this.code = code;
    this.param = options.param ?? null;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }

  get status(): number {
    return MAPPINGS[this.code].status;
  }

  get type(): string {
    return MAPPINGS[this.code].type;
  }

  toJSON(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** A bad environment variable: the process must not start. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** A model package that does not match its manifest (or the contract): the process must not start. */
export class ModelPackageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelPackageError';
  }
}

/** Failure inside the inference worker (ONNX Runtime, or the worker itself). */
export class EngineError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EngineError';
  }
}
