import { readFileSync, writeFileSync } from 'node:fs';

/**
 * Writes a generated file, or with --check on the command line exits 1 when the committed one differs from `text`
 * (a missing file counts as stale).
 */
export function writeOrCheck(target: URL, text: string, what: string, command: string): void {
  if (!process.argv.includes('--check')) {
    writeFileSync(target, text);
    process.stdout.write(`wrote ${what}\n`);
    return;
  }
  let current = '';
  try {
    current = readFileSync(target, 'utf8');
  } catch {
    // missing counts as stale
  }
  if (current !== text) {
    process.stderr.write(`${what} is stale: run ${command}\n`);
    process.exit(1);
  }
  process.stdout.write(`${what} is up to date\n`);
}
