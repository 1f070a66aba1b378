import { expect } from 'vitest';

/** A response with its body read and parsed as JSON (or `undefined` when empty). */
export interface JsonResponse {
  readonly status: number;
  readonly headers: Headers;
  readonly body: unknown;
}

/** Options of {@link jsonClient}'s calls: a JSON body (or raw text), its media type, headers. */
export interface CallOptions {
  readonly body?: unknown;
  readonly raw?: string;
  readonly type?: string;
  readonly headers?: Record<string, string>;
}

/** A `call(method, path, options)` against the service at `base()` (read when called, so it may be set later). */
export function jsonClient(base: () => string) {
  return async (method: string, path: string, options: CallOptions = {}): Promise<JsonResponse> => {
    const headers: Record<string, string> = { ...options.headers };
    const init: RequestInit = { method, headers };
    if (options.body !== undefined || options.raw !== undefined) {
      init.body = options.raw ?? JSON.stringify(options.body);
      headers['content-type'] = options.type ?? 'application/json';
    }
    const response = await fetch(`${base()}${path}`, init);
    const text = await response.text();
    return {
      status: response.status,
      headers: response.headers,
      body: text === '' ? undefined : (JSON.parse(text) as unknown),
    };
  };
}

/** Asserts an `application/problem+json` answer and returns its body. */
export function problem(response: JsonResponse) {
  expect(response.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  return response.body as { status: number; code?: string; detail: string; title: string };
}
