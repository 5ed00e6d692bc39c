import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ServiceError, statusOf, type ErrorCode } from '../src/errors.js';

test('each error code maps to one HTTP status, in one place', () => {
  const expected: Record<ErrorCode, number> = {
    invalid_request: 400, context_length_exceeded: 400, unsupported_parameter: 400, model_not_found: 404, not_found: 404, method_not_allowed: 405,
    invalid_adapter: 400, adapter_exists: 409, adapter_limit: 409, unauthorized: 401, admin_disabled: 403,
    request_timeout: 408, payload_too_large: 413, uri_too_long: 414, unsupported_media_type: 415,
    expectation_failed: 417, headers_too_large: 431, client_closed: 499,
    queue_full: 429, not_ready: 503, shutting_down: 503, timeout: 504, engine_error: 500, internal_error: 500,
  };
  for (const [code, status] of Object.entries(expected)) assert.equal(statusOf(code as ErrorCode), status, code);
});

test("a ServiceError serialises to OpenAI's error shape", () => {
  const error = new ServiceError('model_not_found', 'no such model', { param: 'model' });
  assert.equal(error.status, 404);
  assert.deepEqual(error.toJSON(), { error: { message: 'no such model', type: 'invalid_request_error', param: 'model', code: 'model_not_found' } });
});
