/**
 * The database a `postgres://` URL names, or `undefined` when its path is empty (then the server
 * picks the user's name).
 *
 * ```ts
 * databaseOf('postgres://app@db:5432/shop'); // 'shop'
 * ```
 */
export function databaseOf(url: string): string | undefined {
  const path = new URL(url).pathname.replace(/^\//, '');
  return path === '' ? undefined : decodeURIComponent(path);
}

/**
 * The same server, user, password and parameters as `url`, in database `database`.
 *
 * ```ts
 * withDatabase('postgres://app:pw@db:5432/shop?sslmode=require', 'shop_ledger_a');
 * // 'postgres://app:pw@db:5432/shop_ledger_a?sslmode=require'
 * ```
 */
export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${encodeURIComponent(database)}`;
  return parsed.toString();
}

/**
 * The text with the password of any URL in it replaced by `***`. Works on text that is not a
 * valid URL too: the point is to echo bad values and log URLs safely.
 *
 * ```ts
 * redactUrl('postgres://app:secret@db/shop'); // 'postgres://app:***@db/shop'
 * ```
 */
export function redactUrl(value: string): string {
  return value.replace(/(\/\/[^/@:\s]*):[^/@\s]*@/g, '$1:***@');
}
